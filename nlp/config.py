"""Run configuration: one YAML file fully describes a training run (spaCy-style), validated on load.

Every field is documented below and in `configs/seed.yaml`. Unknown keys, wrong types and missing files are
reported with the key's dotted path and the file's name. `--set key=value` overrides any field; the resolved
config is written into every run directory so that the run can be repeated from it alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .annotations import LABELS


class ConfigError(ValueError):
    """A config problem; the message names the file and the key."""


@dataclass
class DataConfig:
    annotations: list[str] = field(default_factory=lambda: ["annotations/gold"])
    """Gold span stores (files or folders of Label Studio JSON), relative to the project root."""
    dev_docs: list[str] = field(default_factory=list)
    """Documents held out for evaluation and early stopping (file names, e.g. 004_62a5c04a52bade59.txt).
    Empty: the last document in name order. Splits are by DOCUMENT: no document is in train and dev."""
    extra_train: list[str] = field(default_factory=list)
    """More span stores used for TRAINING ONLY: never a dev document, never a cross-validation fold (e.g. the
    synthetic documents of annotations/synthetic). Their document names must differ from those of
    `annotations`."""
    extra_train_labels: list[str] = field(default_factory=lambda: list(LABELS))
    """The labels the `extra_train` documents teach. The tokens of their spans of any other label are left
    out of the loss (taught neither that label nor O), and those spans are not training terms (lexicon.json)."""
    repeat_annotations: int = 1
    """Each epoch takes the training windows of `annotations` this many times and those of `extra_train`
    once: keeps the real documents' weight when many extra ones are added."""
    max_length: int = 256
    """Tokens per window (special tokens included)."""
    stride: int = 64
    """Tokens shared by consecutive training windows of a long document. Prediction cuts windows at sentence
    ends and uses the stride only inside a sentence longer than a window."""
    train_windows: str = "fixed"
    """How training cuts documents: `fixed` (windows of max_length sharing `stride` tokens) or `sentences`
    (windows ending at a sentence end, as prediction always cuts them; `stride` only inside a long sentence)."""


@dataclass
class TrainConfig:
    epochs: float = 20
    """Passes over the training windows (a float is allowed)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: epochs decide)."""
    batch_size: int = 8
    grad_accum: int = 1
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x processes)."""
    lr: float = 1e-4
    """Peak learning rate of the encoder (AdamW, linear warm-up then linear decay)."""
    head_lr: float = 1e-3
    """Learning rate of the freshly initialised classification head."""
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    freeze_embeddings: bool = True
    """Keep the word-embedding matrix fixed (saves optimizer memory and time on CPU)."""
    eval_every: int = 0
    """Evaluate on dev every N optimizer steps (0: once per epoch)."""
    early_stopping_patience: int = 5
    """Stop after this many evaluations without a better dev F1 (0: never stop early)."""
    keep_best: bool = True
    """Keep the model of the best dev evaluation (true) or of the last one (false). Cross-validation always
    keeps the last: its dev document is its test document, and choosing on it would flatter the score."""
    save_every: int = 0
    """Write a resumable checkpoint every N optimizer steps (0: at every evaluation)."""
    mixed_precision: str = "auto"
    """"no", "bf16", "fp16" or "auto" (bf16 on a GPU that supports it, else fp32)."""
    device: str = "auto"
    """"auto", "cpu" or "cuda" (with `accelerate launch`, accelerate decides)."""
    num_threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    label_smoothing: float = 0.0
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay: of L encoder layers, the top one trains at train.lr, the one below at
    lr x decay, ..., the bottom one at lr x decay^(L-1) and the embeddings (when trained) at lr x decay^L;
    1.0 gives every layer train.lr."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the trained weights (decay per optimizer step, bias-corrected
    early on) and evaluate and save the average instead of the raw weights; 0 turns it off."""


@dataclass
class RunConfig:
    model: str = "builtin:e5-small-zh"
    """Encoder: `builtin:e5-small-zh` (embedded, pruned vocabulary), `builtin:multilingual-e5-small`
    (embedded, faithful), any Hugging Face model id, or a local model directory."""
    seed: int = 42
    """Seeds Python, NumPy and torch: the same config gives the same model on the same machine."""
    output_dir: str = "runs"
    """Where `nlp train` makes a new run directory when --out is not given."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check(value, tp, key: str, source: str):
    """Check (and gently coerce) `value` against the annotation `tp`; returns the value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                return _check(value, alt, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: '{key}' must be null")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
        return [_check(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 3e-5 as a string
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if tp in (str, float) and not isinstance(value, tp):
        raise ConfigError(f"{source}: '{key}' must be a {tp.__name__}, got {value!r}")
    return value


def _build(cls, raw: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{source}: unknown key '{where}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k, source) for k, v in raw.items()}
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value, source: str) -> None:
    parts = dotted.split(".")
    cur = raw
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-5")
        key, val = item.split("=", 1)
        try:
            parsed = yaml.safe_load(val) if val.strip() else ""
        except yaml.YAMLError:
            parsed = val
        out.append((key.strip(), parsed))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (None: all defaults), apply `key=value` overrides, validate."""
    raw: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} malformed YAML ({getattr(e, 'problem', e)})") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for key, val in parse_overrides(overrides or []):
        _set_dotted(raw, key, val, f"{source} (--set {key})")
    cfg = _build(RunConfig, raw, "", source)
    _semantic_checks(cfg, source)
    return cfg


def _semantic_checks(cfg: RunConfig, source: str) -> None:
    t, d = cfg.train, cfg.data
    if d.max_length < 16 or d.max_length > 512:
        raise ConfigError(f"{source}: 'data.max_length' must be within 16..512, got {d.max_length}")
    if not 0 <= d.stride < d.max_length // 2:
        raise ConfigError(f"{source}: 'data.stride' must be >= 0 and below half of data.max_length")
    if d.train_windows not in ("fixed", "sentences"):
        raise ConfigError(f"{source}: 'data.train_windows' must be fixed or sentences, got {d.train_windows!r}")
    if t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError(f"{source}: 'train.batch_size' and 'train.grad_accum' must be >= 1")
    if t.lr <= 0 or t.head_lr <= 0:
        raise ConfigError(f"{source}: 'train.lr' and 'train.head_lr' must be > 0")
    if t.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"{source}: 'train.mixed_precision' must be auto, no, bf16 or fp16")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{source}: 'train.device' must be auto, cpu or cuda")
    if not 0 < t.layer_lr_decay <= 1:
        raise ConfigError(f"{source}: 'train.layer_lr_decay' must be in (0, 1], got {t.layer_lr_decay}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"{source}: 'train.ema_decay' must be in [0, 1), got {t.ema_decay}")
    if t.epochs <= 0 and t.max_steps <= 0:
        raise ConfigError(f"{source}: set 'train.epochs' > 0 or 'train.max_steps' > 0")
    for key in ("annotations", "extra_train"):
        for p in getattr(d, key):
            if not Path(p).exists():
                raise ConfigError(f"{source}: 'data.{key}': {p} does not exist")
    if d.repeat_annotations < 1:
        raise ConfigError(f"{source}: 'data.repeat_annotations' must be >= 1, got {d.repeat_annotations}")
    if not d.extra_train_labels or any(lab not in LABELS for lab in d.extra_train_labels):
        raise ConfigError(f"{source}: 'data.extra_train_labels' must list labels among {', '.join(LABELS)}, "
                          f"got {d.extra_train_labels!r}")


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False)


def check_model_dir(model_dir: str | Path, hint: str = "") -> Path:
    """`model_dir` as a Path if it holds a saved model (config.json), else FileNotFoundError naming it."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json){hint}")
    return model_dir


def run_settings(model_dir: Path, max_length: int | None = None, stride: int | None = None) -> dict:
    """Window settings for predicting with a saved model: `max_length` / `stride` where given, else what
    the model was trained with (the run's config.yaml), else the DataConfig defaults."""
    out = {"max_length": DataConfig.max_length, "stride": DataConfig.stride}
    cfg = Path(model_dir) / "config.yaml"
    if cfg.is_file():
        try:
            data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{cfg}: unreadable run config ({e})") from e
        data = data.get("data", {}) if isinstance(data, dict) else {}
        if isinstance(data, dict):
            out.update({k: int(data[k]) for k in ("max_length", "stride") if isinstance(data.get(k), int)})
    if max_length:
        out["max_length"] = max_length
    if stride is not None:
        out["stride"] = stride
    return out
