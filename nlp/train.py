"""Stage 4: fine-tune a token-classification model from a RunConfig (one readable loop, accelerate).

CPU, one GPU, or several through `accelerate launch -m nlp train ...` with no code change. The output
directory is a standard Hugging Face model (config with id2label/label2id, safetensors, tokenizer) plus the
resolved config, metrics (JSON lines), curves (PNG), the dev evaluation and a model card.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .align import (IGNORE, LEXICON_FILE, TAG2ID, TAGS, build_lexicon, char_spans_to_normalized, encode,
                    make_windows, token_tags)
from .annotations import LABELS, Document, atomic_write_json, atomic_write_text, load_corpus, read_json
from .config import RunConfig, dump_config, to_dict
from .evaluate import Evaluation, evaluate_model, evaluate_saved, pooled, summary_line, write_report

STATE_FILE = "trainer_state.json"
CKPT_DIR = "checkpoint"
EMA_FILE = "ema.pt"


def split_documents(docs: list[Document], dev_docs: list[str]) -> tuple[list[Document], list[Document]]:
    """Split by DOCUMENT: `dev_docs` (default: the last document by name) go to dev, the rest to train."""
    names = [d.doc for d in docs]
    if not dev_docs:
        dev_docs = [sorted(names)[-1]] if len(names) > 1 else []
    unknown = [n for n in dev_docs if n not in names]
    if unknown:
        raise ValueError(f"data.dev_docs: {', '.join(unknown)} not among the annotated documents ({', '.join(names)})")
    train = [d for d in docs if d.doc not in dev_docs]
    dev = [d for d in docs if d.doc in dev_docs]
    if not train:
        raise ValueError("data.dev_docs leaves no document to train on")
    return train, dev


def extra_documents(extra: list[str], annotated: list[Document]) -> list[Document]:
    """The documents of the `data.extra_train` stores (training only); none may share a name with an
    annotated document."""
    if not extra:
        return []
    more = load_corpus(extra)
    clash = sorted({d.doc for d in more} & {d.doc for d in annotated})
    if clash:
        raise ValueError(f"data.extra_train: {', '.join(clash)} also in data.annotations (give them other names)")
    return more


def unlearned_labels(dc) -> tuple[str, ...]:
    """The labels the `data.extra_train` documents do not teach (not in `data.extra_train_labels`)."""
    return tuple(lab for lab in LABELS if lab not in dc.extra_train_labels)


def training_lexicon(train_docs: list[Document], extra: list[Document], skip: tuple[str, ...]) -> dict:
    """The training terms (align.build_lexicon) of the training documents and of the extra ones, whose
    spans of the `skip` labels are not learned and so not terms either."""
    kept = [Document(d.doc, d.text, [s for s in d.spans if s.label not in skip]) for d in extra]
    return build_lexicon(train_docs + kept)


def build_windows(tokenizer, docs: list[Document], max_length: int, stride: int,
                  sentences: bool = False, skip: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """Training examples (input_ids, attention_mask, labels) of every window of every document, and the
    number of gold span boundaries that fell inside a token. The tokens of spans labelled one of `skip` are
    left out of the loss (-100): neither that label nor O is taught there."""
    skipped = {TAG2ID[f"{p}-{lab}"] for lab in skip for p in "BI"}
    rows, straddles = [], 0
    for i, doc in enumerate(docs):
        enc = encode(tokenizer, doc.text)
        tags, n = token_tags(enc, char_spans_to_normalized(doc, enc.norm))
        if skipped:
            tags = [IGNORE if t in skipped else t for t in tags]
        straddles += n
        for w in make_windows(tokenizer, enc, max_length, stride, doc_index=i, token_tags=tags, sentences=sentences):
            rows.append({"input_ids": w.input_ids, "attention_mask": [1] * len(w.input_ids), "labels": w.labels})
    return rows, straddles


def to_dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)


def load_model_and_tokenizer(model_spec: str):
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .builtin import resolve_model

    # Whole documents are tokenized before windowing (no "sequence too long" warning wanted), and the
    # fresh classification head is expected (no load report wanted).
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_model(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise ValueError(f"model {model_spec}: a fast tokenizer (offset mapping) is required")
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)), label2id=dict(TAG2ID),
        ignore_mismatched_sizes=True)
    return model, tokenizer


class EpochShuffle:
    """A fresh permutation per epoch from (seed, epoch) alone: the data order does not depend on any RNG
    state, so a run resumed after a kill sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def param_groups(model, tc, log=print) -> list[dict]:
    """AdamW groups: the encoder at train.lr, scaled per layer by train.layer_lr_decay (top layer 1, the one
    below decay, ..., the embeddings decay^layers), no weight decay on biases and layer norms; then the
    classification head at train.head_lr. The top layer's groups come first (metrics.jsonl logs the first
    group's rate). Frozen parameters are left out. Layers are found by name (`...layer.N.`, `layers.N.`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    index = {n: int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))}
    n_layers = max(index.values()) + 1 if index else 0
    if tc.layer_lr_decay < 1 and not index:
        log("warning: train.layer_lr_decay has no effect: no parameter name of this model has a layer number")
    body: dict[tuple, list] = {}  # (lr, no weight decay) -> parameters
    head = []
    for name, p in named:
        if name.startswith("classifier"):
            head.append(p)
            continue
        if name in index:
            depth = n_layers - 1 - index[name]
        else:  # the embeddings below the bottom layer; anything else (an encoder's final norm) at the top
            depth = n_layers if "embeddings" in name and ".encoder." not in name else 0
        no_wd = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        body.setdefault((tc.lr * tc.layer_lr_decay ** depth, no_wd), []).append(p)
    groups = [{"params": body[k], "lr": k[0], "weight_decay": 0.0 if k[1] else tc.weight_decay}
              for k in sorted(body, key=lambda k: (-k[0], k[1]))]
    return groups + [{"params": head, "lr": tc.head_lr, "weight_decay": 0.0}]


def _ema_update(ema: dict, model, decay: float) -> None:
    """ema <- decay x ema + (1 - decay) x weights, once per optimizer step (ema starts at zero; _EmaWeights
    divides by 1 - decay^steps, as Adam does its moments, so no weight of step 0 lingers in it)."""
    for n, p in model.named_parameters():
        if n in ema:
            ema[n].mul_(decay).add_(p.detach(), alpha=1 - decay)


class _EmaWeights:
    """`with _EmaWeights(ema, model, decay, steps):` the model holds the averaged weights inside the block
    (to evaluate or save them) and its own weights again after it. No-op when ema is None."""

    def __init__(self, ema: dict | None, model, decay: float = 0.0, steps: int = 0):
        self.ema, self.model, self.saved = ema, model, None
        self.scale = 1.0 / (1.0 - decay ** steps) if ema is not None and steps > 0 else 1.0

    def __enter__(self):
        if self.ema is not None:
            params = dict(self.model.named_parameters())
            self.saved = {n: params[n].detach().clone() for n in self.ema}
            for n, v in self.ema.items():
                params[n].data.copy_(v).mul_(self.scale)
        return self.model

    def __exit__(self, *exc):
        if self.saved is not None:
            params = dict(self.model.named_parameters())
            for n, v in self.saved.items():
                params[n].data.copy_(v)
            self.saved = None


def _collate(pad_id: int):
    import torch

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n] = torch.tensor(b["input_ids"])
            mask[r, :n] = 1
            labels[r, :n] = torch.tensor(b["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def _mixed_precision(setting: str, use_cpu: bool) -> str:
    import torch

    if setting != "auto":
        return setting
    if use_cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass
class TrainResult:
    out_dir: Path
    best_f1: float
    best_step: int
    steps: int
    seconds: float
    samples_per_second: float
    peak_rss_mb: float
    straddles: int
    history: list[dict] = field(default_factory=list)
    dev: Evaluation | None = None


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _save_model_atomic(model, tokenizer, out_dir: Path) -> None:
    """save_pretrained into a temporary folder, then move each file into place (no half-written model)."""
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=out_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          log=print, checkpoints: bool = True) -> TrainResult:
    """Train as `cfg` says, writing everything into `out_dir`. With `resume`, continue from the last
    checkpoint in `out_dir` (same config) after a kill. `checkpoints=False` writes no resumable checkpoint
    (cross-validation folds: a fold is trained again rather than resumed, and a checkpoint of a model whose
    embeddings train is ~0.7 GB, written at every evaluation)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc, dc = cfg.train, cfg.data
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    use_cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    accelerator = Accelerator(mixed_precision=_mixed_precision(tc.mixed_precision, use_cpu), cpu=use_cpu,
                              gradient_accumulation_steps=tc.grad_accum)
    main = accelerator.is_main_process
    if resume and (out_dir / "train_summary.json").is_file():
        raise ValueError(f"{out_dir}: this run finished (train_summary.json); there is nothing to resume "
                         f"(train into a new --out, or train this one again with --force and without --resume)")
    if main and not resume:  # a summary marks a finished run (cv --reuse trusts it): not this one, yet
        (out_dir / "train_summary.json").unlink(missing_ok=True)
        if not checkpoints:  # an earlier run's checkpoint here would resume into a state this run never had
            shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)
    set_seed(cfg.seed)

    docs = load_corpus(dc.annotations)
    train_docs, dev_docs = split_documents(docs, dc.dev_docs)
    extra = extra_documents(dc.extra_train, docs)
    skip = unlearned_labels(dc)
    lexicon = training_lexicon(train_docs, extra, skip)  # the terms decoding extends fragments to (extend_to_terms)
    if main:
        atomic_write_json(out_dir / LEXICON_FILE, lexicon)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    if tc.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    rows, straddles = build_windows(tokenizer, train_docs, dc.max_length, dc.stride,
                                    sentences=dc.train_windows == "sentences")
    rows = rows * dc.repeat_annotations
    if extra:
        more, n = build_windows(tokenizer, extra, dc.max_length, dc.stride,
                                sentences=dc.train_windows == "sentences", skip=skip)
        rows, straddles = rows + more, straddles + n
    ds = to_dataset(rows)
    sampler = EpochShuffle(len(ds), cfg.seed)
    # The loader gets a generator of its own: creating an iterator must not draw from the global torch RNG
    # (that would shift the dropout masks of a resumed run against the uninterrupted one).
    loader = DataLoader(ds, batch_size=tc.batch_size, sampler=sampler, collate_fn=_collate(tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(cfg.seed))

    optimizer = torch.optim.AdamW(param_groups(model, tc, log))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ema = None  # the weight average (train.ema_decay), float32 whatever the model's dtype
    if tc.ema_decay:
        ema = {n: torch.zeros_like(p, dtype=torch.float32)
               for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def weights_to_use():  # the model as evaluated and saved: its weight average when there is one
        return _EmaWeights(ema, accelerator.unwrap_model(model), tc.ema_decay, state["step"])
    # Counted on the prepared (per-process) loader; accelerate steps a prepared scheduler once per process,
    # hence the factor (as in the Hugging Face examples).
    steps_per_epoch = math.ceil(len(loader) / tc.grad_accum)
    total_steps = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(tc.epochs * steps_per_epoch))
    n = accelerator.num_processes
    scheduler = accelerator.prepare(get_linear_schedule_with_warmup(
        optimizer, int(tc.warmup_ratio * total_steps) * n, total_steps * n))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=tc.label_smoothing)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_f1": -1.0, "best_step": 0, "bad_evals": 0,
             "history": []}
    ckpt = out_dir / CKPT_DIR
    if resume:
        if not (ckpt / STATE_FILE).is_file():
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from ({ckpt / STATE_FILE} missing)")
        saved = out_dir / "config.yaml"
        if saved.is_file() and not _same_config(saved, cfg):
            raise ValueError(f"{out_dir}: --resume with a config that differs from the run's {saved}: resume with "
                             f"the same config and --set options (or train into a new --out)")
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        if ema is not None:
            if not (ckpt / EMA_FILE).is_file():
                raise FileNotFoundError(f"{out_dir}: the checkpoint has no weight average ({ckpt / EMA_FILE}); "
                                        f"resume with the config it was written with")
            for n, v in torch.load(ckpt / EMA_FILE, map_location="cpu", weights_only=True).items():
                ema[n].copy_(v)  # onto the average's own device
        log(f"resuming from step {state['step']} (epoch {state['epoch']}, best dev F1 {state['best_f1']:.3f})")
    if main:
        atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
    more = f" (+{len(extra)} from data.extra_train, learning {', '.join(dc.extra_train_labels)})" if extra else ""
    if dc.repeat_annotations > 1:
        more += f", annotated ones taken {dc.repeat_annotations} times per epoch"
    log(f"train: {len(train_docs)} documents{more}, {len(rows)} windows; dev: {len(dev_docs)} documents "
        f"({', '.join(d.doc for d in dev_docs) or 'none'}); {total_steps} optimizer steps; "
        f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}")

    eval_every = tc.eval_every or steps_per_epoch
    save_every = tc.save_every or eval_every
    metrics_path = out_dir / "metrics.jsonl"
    if main:  # on resume: exactly the evaluations the checkpoint knows (a kill may have left one more line)
        atomic_write_text(metrics_path, "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in state["history"]))
    bar = tqdm(total=total_steps, initial=state["step"], disable=not (progress and main), desc="training",
               unit="step", dynamic_ncols=True)
    running, n_running, samples = 0.0, 0, 0
    best_eval: Evaluation | None = None
    t_train = time.time()
    stop = False
    model.train()
    while state["step"] < total_steps and not stop:
        # accelerate's loaders count epochs themselves; tell them (and our sampler) which one this is
        for obj in (loader, sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(state["epoch"])
        skip = state["batch_in_epoch"]  # batches of this epoch already trained on before a resume
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            with accelerator.accumulate(model):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                loss = loss_fn(out.logits.float().view(-1, out.logits.shape[-1]), batch["labels"].view(-1))
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += 1
            running += loss.item()
            n_running += 1
            samples += batch["input_ids"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            if ema is not None:
                _ema_update(ema, accelerator.unwrap_model(model), tc.ema_decay)
            bar.update(1)
            bar.set_postfix(loss=f"{running / n_running:.4f}")
            if state["step"] % eval_every == 0 or state["step"] >= total_steps:
                record = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3),
                          "train_loss": running / n_running, "lr": scheduler.get_last_lr()[0],
                          "elapsed_s": round(time.time() - t0, 1)}
                running, n_running = 0.0, 0
                ev = None
                if dev_docs and main:
                    with weights_to_use() as m:
                        ev = evaluate_model(m, tokenizer, dev_docs, dc.max_length, dc.stride, lexicon=lexicon)
                    model.train()
                    f1 = ev.seqeval["micro"]["f1"]
                    record["dev"] = {lab: round(ev.seqeval[lab]["f1"], 4) for lab in (*LABELS, "micro")}
                    record["dev_span_f1"] = round(ev.spans["micro"]["f1"], 4)
                    bar.write(f"step {state['step']}: loss {record['train_loss']:.4f} | {summary_line(ev)}")
                    if f1 >= state["best_f1"]:  # ties: the later model
                        state.update(best_f1=f1, best_step=state["step"], bad_evals=0)
                    else:
                        state["bad_evals"] += 1
                elif main:
                    state.update(best_step=state["step"])
                if tc.early_stopping_patience and state["bad_evals"] >= tc.early_stopping_patience:
                    bar.write(f"early stopping: no better dev F1 in {state['bad_evals']} evaluations")
                    stop = True
                if main:
                    if tc.keep_best and ev is not None:  # the best model so far, whenever there is a new one
                        save = state["best_step"] == state["step"]
                    else:  # the last model: when it is final or a checkpoint is about to hold it, not at every
                        # evaluation (0.24 GB each)
                        save = (stop or state["step"] >= total_steps
                                or (checkpoints and state["step"] % save_every == 0))
                    if not tc.keep_best or save:
                        best_eval = ev
                    if save:
                        with weights_to_use() as m:
                            _save_model_atomic(m, tokenizer, out_dir)
                        if ev is not None:
                            write_report(ev, out_dir, f"Dev evaluation (step {state['step']})")
                state["history"].append(record)
                if main:
                    with open(metrics_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
                stop = _on_all(accelerator, stop)
            if checkpoints and state["step"] % save_every == 0 and not stop and state["step"] < total_steps:
                _checkpoint(accelerator, ckpt, state, ema)
            if stop or state["step"] >= total_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    train_seconds = time.time() - t_train
    if main:
        write_curves(state["history"], out_dir / "curves.png")
    result = TrainResult(out_dir=out_dir, best_f1=state["best_f1"], best_step=state["best_step"],
                         steps=state["step"], seconds=time.time() - t0,
                         samples_per_second=samples / max(train_seconds, 1e-9), peak_rss_mb=peak_rss_mb(),
                         straddles=straddles, history=state["history"], dev=best_eval)
    if main:
        atomic_write_json(out_dir / "train_summary.json", {
            "best_dev_f1": result.best_f1, "best_step": result.best_step, "steps": result.steps,
            "seconds": round(result.seconds, 1), "samples_per_second": round(result.samples_per_second, 2),
            "peak_rss_mb": round(result.peak_rss_mb, 1), "train_documents": [d.doc for d in train_docs],
            "extra_train_documents": [d.doc for d in extra], "extra_train_labels": list(dc.extra_train_labels),
            "dev_documents": [d.doc for d in dev_docs], "train_windows": len(rows),
            "gold_boundaries_inside_a_token": straddles, "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision})
        write_model_card(cfg, out_dir, train_docs + extra, dev_docs, result)
        # A finished run resumes nothing: its last checkpoint (model + optimizer state, ~0.4 GB) goes.
        shutil.rmtree(ckpt, ignore_errors=True)
    return result


RUN_OUTPUTS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", LEXICON_FILE,
               "special_tokens_map.json", "config.yaml", "metrics.jsonl", "curves.png", "eval.json", "eval.md",
               "predictions.json", "train_summary.json", "README.md")


def clear_run_outputs(out_dir: Path) -> None:
    """Remove what an earlier run wrote into `out_dir` (for --force), so no stale report survives."""
    for name in RUN_OUTPUTS:
        (Path(out_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(out_dir) / CKPT_DIR, ignore_errors=True)


def _checkpoint(accelerator, ckpt: Path, state: dict, ema: dict | None = None) -> None:
    """Resumable checkpoint: accelerate's state (model, optimizer, scheduler, every process's RNG) + our
    counters (+ the weight average when train.ema_decay is on), written into a temporary folder and swapped
    in, so a kill never leaves a broken checkpoint. Called on every process (each saves its own RNG state);
    the main one swaps the folders."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        if ema is not None:
            import torch

            torch.save({n: v.cpu() for n, v in ema.items()}, tmp / EMA_FILE)
        old = ckpt.with_name(ckpt.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _on_all(accelerator, value):
    """The main process's value, on every process (evaluation and early stopping happen on the main one)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def write_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = [h["step"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(steps, [h["train_loss"] for h in history], "o-", color="tab:red", label="train loss")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("train loss", color="tab:red")
    if any("dev" in h for h in history):
        ax2 = ax1.twinx()
        for lab, style in (("micro", "k-"), ("VALUE", "g--"), ("PERIOD", "b--"), ("METRIC", "m--"),
                           ("ENTITY", "c--")):
            pts = [(h["step"], h["dev"][lab]) for h in history if "dev" in h]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"dev F1 {lab}")
        ax2.set_ylabel("dev F1 (seqeval)")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="lower right", fontsize=7)
    ax1.set_title("training curves")
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_model_card(cfg: RunConfig, out_dir: Path, train_docs, dev_docs, result: TrainResult) -> None:
    dev = ""
    if (out_dir / "eval.md").exists():
        dev = (out_dir / "eval.md").read_text(encoding="utf-8").replace("# ", "### ")
    card = f"""---
language: zh
tags: [token-classification, ner, finance, chinese]
---
# Chinese financial span tagger

Token-classification model tagging ENTITY, METRIC, VALUE and PERIOD spans (IOB2) in Chinese financial news,
call transcripts and filings. Fine-tuned from `{cfg.model}` by the `nlp` toolkit.

- Labels: {", ".join(TAGS)}
- Training documents: {", ".join(d.doc for d in train_docs)}
- Dev documents: {", ".join(d.doc for d in dev_docs) or "none"}
- Best dev seqeval micro F1: {result.best_f1:.3f} at step {result.best_step} of {result.steps}
- Training time: {result.seconds:.0f} s; peak memory {result.peak_rss_mb:.0f} MB

## Intended use
Pre-annotation and extraction of figures from Chinese earnings texts about the kind of company it was
trained on; feed the text through `nlp extract` (or the `nlp` Python API), which normalizes Traditional
characters, full-width digits and markdown noise first and maps spans back to the original offsets.
Loading with plain `transformers` (`AutoModelForTokenClassification`, `pipeline("token-classification")`)
works, but skips that normalization.

## Limits
Trained on a handful of documents about one company: expect lower scores on other companies, other
sectors and on filings' tables. Always check extracted figures before relying on them.

## Resolved config
```yaml
{dump_config(cfg)}```

{dev}
"""
    atomic_write_text(out_dir / "README.md", card)


# --------------------------------------------------------------------------------------------- CV

def _finished_fold(fold_dir: Path, fold_cfg: RunConfig) -> dict | None:
    """The train summary of a fold trained to the end with exactly this configuration, else None."""
    summary, saved = fold_dir / "train_summary.json", fold_dir / "config.yaml"
    if not (summary.is_file() and saved.is_file() and (fold_dir / "config.json").is_file()):
        return None
    return read_json(summary) if _same_config(saved, fold_cfg) else None


def _same_config(saved: Path, cfg: RunConfig) -> bool:
    """Whether the run config saved at `saved` trains as `cfg` does (model, seed, data, train); a key added
    to the config since that run was saved counts with its default value."""
    import yaml

    mine = to_dict(cfg)
    theirs = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    defaults = to_dict(RunConfig())
    for k in ("data", "train"):
        if isinstance(theirs.get(k), dict):
            theirs[k] = {**defaults[k], **theirs[k]}
    return all(theirs.get(k) == mine.get(k) for k in ("model", "seed", "data", "train"))


def cross_validate(cfg: RunConfig, out_dir: str | Path, progress: bool = True, log=print,
                   reuse: bool = False) -> dict:
    """Leave-one-document-out: for each document, train on the others for the configured epochs and
    evaluate the LAST model on it (no early stopping, no choice of epoch on the held-out document).
    Reports per-fold, mean, spread and pooled scores. `reuse=True` scores a fold already trained to the end
    in `out_dir` with the same configuration instead of training it again (training is deterministic: the
    model would be the same), e.g. after a change to decoding or an interrupted run."""
    import copy

    out_dir = Path(out_dir)
    docs = load_corpus(cfg.data.annotations)
    folds, evals = [], []
    for d in sorted(x.doc for x in docs):
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.data.dev_docs = [d]
        fold_cfg.train.keep_best = False  # the held-out document must not choose the epoch
        fold_cfg.train.early_stopping_patience = 0
        fold_dir = out_dir / Path(d).stem
        done = _finished_fold(fold_dir, fold_cfg) if reuse else None
        if done is not None:
            log(f"== fold: held-out {d} (trained before: scoring {fold_dir})")
            train_docs, dev_docs = split_documents(docs, [d])
            if not (fold_dir / LEXICON_FILE).is_file():  # a fold trained before lexicons: its training terms
                extra = extra_documents(cfg.data.extra_train, docs)
                atomic_write_json(fold_dir / LEXICON_FILE,
                                  training_lexicon(train_docs, extra, unlearned_labels(cfg.data)))
            dev = evaluate_saved(fold_dir, dev_docs, fold_cfg.data.max_length, fold_cfg.data.stride)
            write_report(dev, fold_dir, title=f"Evaluation on {d}")
            folds.append({"doc": d, "best_step": done["best_step"], "seconds": done["seconds"],
                          "samples_per_second": done["samples_per_second"],
                          "seqeval": dev.seqeval, "spans": dev.spans})
            evals.append(dev)
            continue
        log(f"== fold: held-out {d}")
        res = train(fold_cfg, fold_dir, progress=progress, log=log, checkpoints=False)
        if res.dev is None:
            raise RuntimeError(f"fold {d}: no dev evaluation was made")
        evals.append(res.dev)
        folds.append({"doc": d, "best_step": res.best_step, "seconds": round(res.seconds, 1),
                      "samples_per_second": round(res.samples_per_second, 2),
                      "seqeval": res.dev.seqeval, "spans": res.dev.spans})
    pool = pooled(evals)
    summary = {"folds": folds, "pooled": {"seqeval": pool.seqeval, "spans": pool.spans}, "mean": {}, "std": {},
               "seconds": round(sum(f["seconds"] for f in folds), 1)}
    for view in ("seqeval", "spans"):
        for lab in (*LABELS, "micro", "macro"):
            vals = [f[view][lab]["f1"] for f in folds]
            summary["mean"].setdefault(view, {})[lab] = float(np.mean(vals))
            summary["std"].setdefault(view, {})[lab] = float(np.std(vals))
    atomic_write_json(out_dir / "cv.json", summary)
    atomic_write_text(out_dir / "cv.md", cv_markdown(summary))
    return summary


def cv_markdown(summary: dict) -> str:
    lines = ["# Leave-one-document-out cross-validation", ""]
    for view in ("seqeval", "spans"):
        lines += [f"## {view} F1", "", "| held-out document | " + " | ".join((*LABELS, "micro")) + " |",
                  "|---|" + "---:|" * (len(LABELS) + 1)]
        for f in summary["folds"]:
            lines.append(f"| {f['doc']} | " + " | ".join(f"{f[view][lab]['f1']:.3f}" for lab in (*LABELS, "micro")) + " |")
        lines.append("| **mean ± std** | " + " | ".join(
            f"{summary['mean'][view][lab]:.3f} ± {summary['std'][view][lab]:.3f}" for lab in (*LABELS, "micro")) + " |")
        lines.append("| **pooled** (all held-out documents together) | " + " | ".join(
            f"{summary['pooled'][view][lab]['f1']:.3f}" for lab in (*LABELS, "micro")) + " |")
        lines.append("")
    return "\n".join(lines)

