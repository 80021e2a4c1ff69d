"""Training from the smoke config on the real seeds and the embedded model: the loss goes down, the saved
directory is a standard Hugging Face model that reloads to identical predictions, a killed run resumes to
the same model, and cross-validation splits by document."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nlp.align import TAGS, build_lexicon, read_lexicon
from nlp.annotations import load_corpus, parse_inline, save_documents
from nlp.config import load_config
from nlp.evaluate import evaluate_model
from nlp.reader import normalize
from nlp.train import (build_windows, extra_documents, load_model_and_tokenizer, split_documents,
                       training_lexicon)

from conftest import GOLD, ROOT

SMOKE = ROOT / "configs/smoke.yaml"


def _loss(model, rows):
    from nlp.train import _collate

    batch = _collate(1)(rows)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), batch["labels"].view(-1),
                                             ignore_index=-100).item()


def test_training_lowers_the_loss(smoke_run):
    cfg, out, result = smoke_run
    torch.manual_seed(cfg.seed)
    fresh, tok = load_model_and_tokenizer(cfg.model)
    train_docs, _ = split_documents(load_corpus(GOLD), cfg.data.dev_docs)
    rows, _ = build_windows(tok, train_docs, cfg.data.max_length, cfg.data.stride)
    sample = rows[::max(1, len(rows) // 24)][:24]
    from transformers import AutoModelForTokenClassification

    trained = AutoModelForTokenClassification.from_pretrained(out)
    before, after = _loss(fresh, sample), _loss(trained, sample)
    assert after < 0.7 * before, (before, after)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [12, 24] and all("dev" in h for h in history)
    assert history[-1]["dev"]["VALUE"] > 0.3  # 24 steps already find values on the unseen dev seed


def test_run_directory_is_a_complete_hf_model(smoke_run):
    cfg, out, _ = smoke_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "metrics.jsonl",
                 "curves.png", "eval.json", "eval.md", "README.md", "train_summary.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(TAGS))] == list(TAGS)
    assert load_config(out / "config.yaml") == cfg  # the run is reproducible from its own config
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(out), device="cpu")
    assert isinstance(tagger("快手三季度营收311亿元，同比增长11.4%。"), list)


def test_run_writes_the_training_terms_beside_the_model(smoke_run, tmp_path):
    """lexicon.json holds the ENTITY and METRIC terms of the TRAINING documents only (decoding extends
    fragments to them); a broken one is refused with its path."""
    cfg, out, _ = smoke_run
    docs = load_corpus(GOLD)
    train_docs = [d for d in docs if d.doc not in cfg.data.dev_docs]
    lexicon = read_lexicon(out)
    assert lexicon == build_lexicon(train_docs)
    assert "经调整净利润" in lexicon["METRIC"] and "快手" in lexicon["ENTITY"]
    dev_only = ({normalize(s.text).text for d in docs if d.doc in cfg.data.dev_docs for s in d.spans
                 if s.label == "METRIC"} - {normalize(s.text).text for d in train_docs for s in d.spans})
    assert dev_only and not dev_only & set(lexicon["METRIC"])
    assert read_lexicon(tmp_path) is None  # a model trained elsewhere: no extension
    (tmp_path / "lexicon.json").write_text('{"METRIC": "收入"}', encoding="utf-8")
    with pytest.raises(ValueError, match="lexicon.json: not a lexicon"):
        read_lexicon(tmp_path)


def test_saved_model_reloads_to_identical_predictions(smoke_run):
    cfg, out, result = smoke_run
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    dev = [d for d in load_corpus(GOLD) if d.doc in cfg.data.dev_docs]
    model = AutoModelForTokenClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ev = evaluate_model(model, tok, dev, cfg.data.max_length, cfg.data.stride, lexicon=read_lexicon(out))
    saved = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    again = {k: [{"start": s.start, "end": s.end, "label": s.label} for s in v] for k, v in ev.predictions.items()}
    assert again == {k: [{x: s[x] for x in ("start", "end", "label")} for s in v] for k, v in saved.items()}
    assert ev.seqeval["micro"]["f1"] == pytest.approx(result.best_f1)


def test_evaluate_command_scores_what_training_saved(smoke_run, tmp_path, capsys):
    """`nlp evaluate` predicts the dev document exactly as the run's own evaluation did (same windows,
    decoding and lexicon)."""
    from nlp.cli import main

    cfg, out, result = smoke_run
    assert main(["evaluate", "--model", str(out), "--data", str(GOLD), "--docs", *cfg.data.dev_docs,
                 "--out", str(tmp_path)]) == 0
    strip = lambda preds: {k: [(s["start"], s["end"], s["label"]) for s in v] for k, v in preds.items()}  # noqa: E731
    assert strip(json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))) == \
        strip(json.loads((out / "predictions.json").read_text(encoding="utf-8")))
    assert "seqeval micro F1" in capsys.readouterr().out


def test_split_is_by_document():
    docs = load_corpus(GOLD)
    train_docs, dev = split_documents(docs, ["001_3b8c966c9b7f5990.txt"])
    assert [d.doc for d in dev] == ["001_3b8c966c9b7f5990.txt"]
    assert not {d.doc for d in train_docs} & {d.doc for d in dev}
    with pytest.raises(ValueError, match="not among the annotated documents"):
        split_documents(docs, ["nope.txt"])


def test_extra_training_documents_teach_only_their_labels(tmp_path):
    """data.extra_train documents come on top of the training split (a name that is also an annotated
    document is refused); the tokens of their spans of an unlearned label are left out of the loss, and
    those spans are not training terms."""
    docs = load_corpus(GOLD)
    train_docs, _ = split_documents(docs, ["001_3b8c966c9b7f5990.txt"])
    save_documents(tmp_path / "s1.json", [parse_inline(
        "{{ENTITY|星河科技}}{{PERIOD|一季度}}{{METRIC|广告收入}}达{{VALUE|3亿元}}。", "s1.txt")])
    (extra,) = extra_documents([str(tmp_path)], docs)
    assert extra.doc == "s1.txt" and extra_documents([], docs) == []
    lex = training_lexicon(train_docs, [extra], ("ENTITY",))
    assert "广告收入" in lex["METRIC"] and "星河科技" not in lex["ENTITY"]
    assert "星河科技" in training_lexicon(train_docs, [extra], ())["ENTITY"]

    _, tok = load_model_and_tokenizer(load_config(ROOT / "configs" / "smoke.yaml").model)
    (full,), _ = build_windows(tok, [extra], 64, 16)
    (part,), _ = build_windows(tok, [extra], 64, 16, skip=("ENTITY",))
    assert [TAGS[t] if t >= 0 else t for t in full["labels"][1:6]] == ["B-ENTITY"] + ["I-ENTITY"] * 3 + ["B-PERIOD"]
    assert part["labels"][1:5] == [-100] * 4 and part["labels"][5:] == full["labels"][5:]

    save_documents(tmp_path / "s1.json", [parse_inline("营收{{VALUE|3亿元}}", "001_3b8c966c9b7f5990.txt")])
    with pytest.raises(ValueError, match="data.extra_train: 001_3b8c966c9b7f5990.txt also in data.annotations"):
        extra_documents([str(tmp_path)], docs)


@pytest.mark.parametrize("extra", [[], ["--set", "train.ema_decay=0.6", "--set", "train.layer_lr_decay=0.8"]],
                         ids=["plain", "weight-average"])
def test_killed_run_resumes_to_the_same_model(tmp_path, extra):
    """Kill a run (SIGKILL) after its first checkpoint, resume it, and compare with an uninterrupted run;
    with train.ema_decay the checkpoint carries the weight average too (the saved model is the average)."""
    args = [sys.executable, "-m", "nlp", "train", str(SMOKE), "--quiet", "--set", "train.max_steps=4",
            "--set", "train.save_every=1", "--set", "train.eval_every=2", *extra]
    full = tmp_path / "full"
    subprocess.run(args + ["--out", str(full)], check=True, cwd=ROOT, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads(state.read_text())["step"]
    assert 1 <= step < 4
    if not extra:  # a resume must train as the run did
        other = subprocess.run(args + ["--out", str(killed), "--resume", "--set", "train.lr=1e-3"], cwd=ROOT,
                               capture_output=True, text=True)
        assert other.returncode != 0 and "differs from the run's" in other.stderr
    done = subprocess.run(args + ["--out", str(killed), "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming from step {step}" in done.stdout
    from safetensors.numpy import load_file

    a, b = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # same data order, same dropout masks, same optimizer state: bit for bit the same weights
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # a finished run keeps no checkpoint (0.4 GB) and refuses a second --resume with a clear message
    assert not (full / "checkpoint").exists() and not (killed / "checkpoint").exists()
    again = subprocess.run(args + ["--out", str(killed), "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode != 0 and "this run finished" in again.stderr


def test_layer_lr_decay_scales_each_layer_and_spares_the_head():
    """train.layer_lr_decay: the top encoder layer trains at train.lr, each layer below at `decay` times the
    one above, the trained embeddings below the bottom layer; the head keeps head_lr; the frozen word
    embeddings are in no group. With 1.0: the three groups of plain AdamW fine-tuning."""
    import copy

    from nlp.train import param_groups

    cfg = copy.deepcopy(load_config(SMOKE))
    model, _ = load_model_and_tokenizer(cfg.model)
    model.get_input_embeddings().weight.requires_grad_(False)
    names = {id(p): n for n, p in model.named_parameters()}
    layers = model.config.num_hidden_layers

    def lr_of(groups):
        return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}

    plain = param_groups(model, cfg.train)
    assert [(g["lr"], g["weight_decay"]) for g in plain] == [
        (cfg.train.lr, cfg.train.weight_decay), (cfg.train.lr, 0.0), (cfg.train.head_lr, 0.0)]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [n for n in trained if n.endswith("bias") or "LayerNorm" in n]
    assert [[names[id(p)] for p in g["params"]] for g in plain] == [
        [n for n in trained if not n.startswith("classifier") and n not in no_decay],
        [n for n in no_decay if not n.startswith("classifier")], ["classifier.weight", "classifier.bias"]]
    cfg.train.layer_lr_decay = 0.5
    groups = param_groups(model, cfg.train)
    lr = lr_of(groups)
    assert len(lr) == sum(p.requires_grad for p in model.parameters())
    assert "bert.embeddings.word_embeddings.weight" not in lr
    top, bottom = f"bert.encoder.layer.{layers - 1}.", "bert.encoder.layer.0."
    assert lr[top + "attention.self.query.weight"] == (cfg.train.lr, cfg.train.weight_decay)
    assert lr[top + "output.LayerNorm.bias"] == (cfg.train.lr, 0.0)
    assert lr[bottom + "attention.self.query.weight"][0] == pytest.approx(cfg.train.lr * 0.5 ** (layers - 1))
    assert lr["bert.embeddings.position_embeddings.weight"][0] == pytest.approx(cfg.train.lr * 0.5 ** layers)
    assert lr["classifier.weight"] == (cfg.train.head_lr, 0.0)
    assert groups[0]["lr"] == cfg.train.lr  # the group metrics.jsonl logs


def test_weight_average_is_what_the_run_evaluates_and_saves(tmp_path, monkeypatch):
    """train.ema_decay: the saved model holds the bias-corrected exponential average of the weights after
    each optimizer step (recorded here as the run goes), not the last step's weights; the frozen word
    embeddings stay as loaded."""
    import copy

    from safetensors.numpy import load_file

    from nlp import train as train_module
    from nlp.evaluate import evaluate_saved

    seen = []
    real_update = train_module._ema_update

    def record(ema, model, decay):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if n in ema})
        real_update(ema, model, decay)

    monkeypatch.setattr(train_module, "_ema_update", record)
    cfg = copy.deepcopy(load_config(SMOKE))
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.keep_best, cfg.train.ema_decay = 5, 2, False, 0.7
    cfg.train.grad_accum = 2  # the average moves once per optimizer step, not per batch
    res = train_module.train(cfg, tmp_path, progress=False, log=lambda *a: None, checkpoints=False)
    assert res.steps == 5 and len(seen) == 5
    saved = load_file(tmp_path / "model.safetensors")
    d = cfg.train.ema_decay
    for name in ("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        expected = sum((1 - d) * d ** (4 - t) * w[name] for t, w in enumerate(seen)) / (1 - d ** 5)
        np.testing.assert_allclose(saved[name], expected.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(saved["classifier.weight"] - seen[-1]["classifier.weight"].numpy()).max() > 1e-3  # not the last
    # the last evaluation (step 5) scored the saved average, not the raw weights
    dev = [doc for doc in load_corpus(GOLD) if doc.doc in cfg.data.dev_docs]
    ev = evaluate_saved(tmp_path, dev, cfg.data.max_length, cfg.data.stride)
    assert ev.spans["micro"] == pytest.approx(res.dev.spans["micro"])
    fresh, _ = load_model_and_tokenizer(cfg.model)
    word = "bert.embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(saved[word], fresh.state_dict()[word].numpy())
    # evaluating or saving inside the swap leaves the weights the run goes on training exactly as they were
    lin = torch.nn.Linear(3, 2)
    before = {n: p.detach().clone() for n, p in lin.named_parameters()}
    ema = {n: torch.ones_like(p) for n, p in lin.named_parameters()}
    with train_module._EmaWeights(ema, lin, 0.5, 1) as m:
        assert torch.equal(m.weight, torch.full((2, 3), 2.0))  # 1 / (1 - 0.5^1)
    for n, p in lin.named_parameters():
        assert torch.equal(p, before[n]), n


def test_cv_reuses_a_fold_only_with_the_same_configuration(smoke_run):
    """`nlp cv --reuse` scores a finished fold instead of training it again, but only one trained with
    exactly the fold's configuration; its score is the one the run itself reported for the saved model."""
    import copy

    from nlp.evaluate import evaluate_saved
    from nlp.train import _finished_fold

    cfg, out, res = smoke_run
    done = _finished_fold(out, cfg)
    assert done is not None and done["steps"] == res.steps
    for key, value in (("lr", cfg.train.lr * 2), ("epochs", cfg.train.epochs + 1)):
        changed = copy.deepcopy(cfg)
        setattr(changed.train, key, value)
        assert _finished_fold(out, changed) is None
    moved = copy.deepcopy(cfg)
    moved.data.dev_docs = ["000_bf5218bb65c99514.txt"]
    assert _finished_fold(out, moved) is None
    dev = [d for d in load_corpus(GOLD) if d.doc in cfg.data.dev_docs]
    ev = evaluate_saved(out, dev, cfg.data.max_length, cfg.data.stride)
    assert ev.spans["micro"] == pytest.approx(res.dev.spans["micro"])


def test_checkpoint_free_run_saves_only_its_last_model(tmp_path, monkeypatch):
    """A cross-validation fold (`checkpoints=False`, keep_best false) writes no resumable checkpoint (and
    removes a stale one) and the model once, at the end; the evaluation it returns is the last one, of the
    model it saved."""
    import copy

    from nlp import train as train_module
    from nlp.config import load_config
    from nlp.evaluate import evaluate_saved

    saved = []
    real_save = train_module._save_model_atomic
    monkeypatch.setattr(train_module, "_save_model_atomic", lambda *a: (saved.append(1), real_save(*a)))
    cfg = copy.deepcopy(load_config(ROOT / "configs" / "smoke.yaml"))
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.keep_best = 6, 3, False
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "trainer_state.json").write_text("{}")
    res = train_module.train(cfg, tmp_path, progress=False, log=lambda *a: None, checkpoints=False)
    assert not (tmp_path / "checkpoint").exists()
    assert len(saved) == 1
    assert [h["step"] for h in res.history] == [3, 6] and res.steps == 6
    dev = [d for d in load_corpus(GOLD) if d.doc in cfg.data.dev_docs]
    ev = evaluate_saved(tmp_path, dev, cfg.data.max_length, cfg.data.stride)
    assert ev.spans["micro"] == pytest.approx(res.dev.spans["micro"])
    assert res.history[-1]["dev_span_f1"] == pytest.approx(res.dev.spans["micro"]["f1"], abs=1e-4)


def test_run_with_extra_documents_weights_and_records_them(tmp_path):
    """A run with data.extra_train trains on the split's windows `repeat_annotations` times plus the extra
    documents' windows once, records them in train_summary.json, and writes only the learned labels' terms
    of the extra documents into lexicon.json."""
    import copy
    import shutil

    from nlp.train import train

    store = tmp_path / "extra"
    store.mkdir()
    for name in ("s1a.json", "s9a.json"):
        shutil.copy(ROOT / "annotations" / "synthetic" / name, store / name)
    cfg = copy.deepcopy(load_config(ROOT / "configs" / "smoke.yaml"))
    cfg.data.extra_train, cfg.data.extra_train_labels = [str(store)], ["METRIC", "VALUE", "PERIOD"]
    cfg.data.repeat_annotations = 2
    cfg.train.max_steps, cfg.train.eval_every = 2, 2
    train(cfg, tmp_path / "run", progress=False, log=lambda *a: None, checkpoints=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text(encoding="utf-8"))
    _, tok = load_model_and_tokenizer(cfg.model)
    train_docs, _ = split_documents(load_corpus(GOLD), cfg.data.dev_docs)
    extra = load_corpus(store)
    n_seed = len(build_windows(tok, train_docs, cfg.data.max_length, cfg.data.stride)[0])
    n_extra = len(build_windows(tok, extra, cfg.data.max_length, cfg.data.stride)[0])
    assert summary["train_windows"] == 2 * n_seed + n_extra
    assert summary["extra_train_documents"] == ["s1a.txt", "s9a.txt"]
    lex = read_lexicon(tmp_path / "run")
    metrics = {normalize(s.text).text for d in extra for s in d.spans if s.label == "METRIC"}
    names = {normalize(s.text).text for d in extra for s in d.spans if s.label == "ENTITY"}
    assert metrics <= set(lex["METRIC"]) | {m for m in metrics if len(m) < 2}
    assert not names & set(lex["ENTITY"])


def test_sentence_training_windows_keep_every_gold_tag():
    """data.train_windows: sentences cuts training windows where prediction cuts them; every token of every
    document still lands in a window with its gold tag."""
    from nlp.align import encode, token_tags
    from nlp.align import char_spans_to_normalized as to_norm

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    _, tok = load_model_and_tokenizer(cfg.model)
    docs = load_corpus(GOLD)[:2]
    fixed, _ = build_windows(tok, docs, 64, 16)
    rows, _ = build_windows(tok, docs, 64, 16, sentences=True)
    assert sum(len(r["input_ids"]) for r in rows) < sum(len(r["input_ids"]) for r in fixed)
    seen = []
    for r in rows:
        assert len(r["labels"]) == len(r["input_ids"]) <= 64 and r["labels"][0] == r["labels"][-1] == -100
        seen.extend(r["labels"][1:-1])
    want = []
    for d in docs:
        enc = encode(tok, d.text)
        want.extend(token_tags(enc, to_norm(d, enc.norm))[0])
    # windows overlap only inside sentences longer than a window: every gold tag is there at least once
    from collections import Counter

    got, need = Counter(seen), Counter(want)
    assert all(got[t] >= n for t, n in need.items()) and sum(got.values()) < 1.25 * sum(need.values())
