"""Configs: every shipped config loads; bad configs get an error naming the file and the key."""

import pytest

from nlp.config import ConfigError, dump_config, load_config

from conftest import ROOT


@pytest.mark.parametrize("name", ["seed", "smoke", "gpu", "synthetic"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.data.annotations == ["annotations/gold"]
    assert load_config(ROOT / "configs" / f"{name}.yaml") == cfg


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(ROOT / "configs/seed.yaml", ["train.lr=3e-5", "data.max_length=128", "data.stride=32",
                                                          "model=bert-base-chinese"])
    assert cfg.train.lr == 3e-5 and cfg.data.max_length == 128 and cfg.model == "bert-base-chinese"
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(p) == cfg  # the resolved config reproduces the run


def _write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("text,message", [
    ("train:\n  lr: 1e-4\n  epocs: 3\n", "unknown key 'train.epocs'"),
    ("train:\n  batch_size: eight\n", "'train.batch_size' must be an integer"),
    ("train:\n  freeze_embeddings: maybe\n", "'train.freeze_embeddings' must be true or false"),
    ("data:\n  annotations: [no/such/dir]\n", "'data.annotations': no/such/dir does not exist"),
    ("data:\n  max_length: 100\n  stride: 60\n", "'data.stride'"),
    ("data:\n  train_windows: paragraphs\n", "'data.train_windows' must be fixed or sentences"),
    ("data:\n  extra_train: [no/such/dir]\n", "'data.extra_train': no/such/dir does not exist"),
    ("data:\n  extra_train_labels: [VALUE, AMOUNT]\n", "'data.extra_train_labels' must list labels among"),
    ("data:\n  repeat_annotations: 0\n", "'data.repeat_annotations' must be >= 1"),
    ("train:\n  ema_decay: 1.0\n", "'train.ema_decay' must be in [0, 1), got 1.0"),
    ("train:\n  layer_lr_decay: 0\n", "'train.layer_lr_decay' must be in (0, 1], got 0"),
    ("train: [1, 2\n", "malformed YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("train: 3\n", "'train' must be a mapping"),
])
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(ROOT / "configs/seed.yaml", ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_config(ROOT / "configs/seed.yaml", ["train.learning_rate=1"])
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
