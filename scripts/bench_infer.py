"""Inference throughput: `nlp` end to end against transformers' token-classification pipeline.

    .venv/bin/python scripts/bench_infer.py --model runs/main [--repeat 3] [--threads 2] [--batch-sizes 1 8 64]

Texts: the five seed articles (their original text). Measured, best of --repeat runs:
- nlp end to end: reading is excluded (texts in memory), everything else included: normalization,
  tokenization, windows, batched forward passes, merging, decoding to original offsets and fact building;
- nlp spans only (no facts);
- transformers.pipeline("token-classification", aggregation_strategy="simple", stride=...) on the same
  model and the same (normalized) texts, with the same window length and stride. Its spans are compared
  (normalized offsets and label) with `nlp.align.pipeline_decode` over our tokenization, the pipeline's
  windows and our batched forward pass: identical spans prove the machinery is the pipeline's. The share
  of the DEFAULT spans equal to the pipeline's is printed too; they differ by design (sentence-aligned
  windows, Viterbi decoding, the schema's boundary rules: BENCHMARKS.md has what each is worth);
- the bare forward pass over the windows `nlp` uses (the floor for any implementation; sentences without a
  numeral are not read: `nlp.align.figure_token_ranges`).
Peak memory (max RSS of this process) is printed at the end. With a GPU, --batch-sizes gives chars/s per
batch size, and the stages are timed one by one on one process (preparation: normalization, tokenization,
windows; the forward pass; completion: merging, decoding, fact building) to show where the time goes; end to
end, `pipe` runs preparation and completion in --workers processes (default: the extractor's, one per core
but one on a GPU, none on a CPU).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[16], help="windows per forward pass")
    ap.add_argument("--copies", type=int, default=1, help="repeat the corpus N times (GPU: more work)")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the transformers pipeline comparison")
    ap.add_argument("--int8", action="store_true", help="CPU: dynamic int8 quantization of the linear layers")
    ap.add_argument("--workers", type=int, default=None, help="worker processes of pipe (default: the extractor's)")
    ap.add_argument("--stages", action="store_true", help="time preparation, forward pass and completion apart")
    args = ap.parse_args(argv)

    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from nlp.align import (Window, decode, merge_window_logits, o_tag_index, pipeline_decode, pipeline_window_bounds,
                           predict_logits, prepare_document)
    from nlp.facts import build_facts
    from nlp.infer import load
    from nlp.annotations import strip_span
    from nlp.reader import normalize, read_text

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = [read_text(p) for p in sorted((ROOT / "seeds").glob("*.txt"))] * args.copies
    n_chars = sum(len(t) for t in texts)
    ex = load(args.model, int8=args.int8, workers=args.workers)
    print(f"model {args.model}; device {ex.device}; torch threads {torch.get_num_threads()}; "
          f"{len(texts)} texts, {n_chars} characters; windows of {ex.max_length} tokens, stride {ex.stride}"
          f"{'; int8' if args.int8 else ''}; pipe workers {ex.workers}")
    ex.spans(texts[:1])  # warm-up
    list(ex.pipe(texts[:2], batch_size=2))  # starts the worker processes, if any
    for bs in args.batch_sizes:
        ex.batch_size = bs
        t_full, docs = best_of(lambda: list(ex.pipe(texts, batch_size=len(texts))), args.repeat)
        t_spans, spans = best_of(lambda: ex.spans(texts), args.repeat)
        print(f"batch {bs:>3}: nlp end to end {n_chars / t_full:10.0f} chars/s ({t_full:.2f} s, "
              f"{sum(len(d.facts) for d in docs)} facts) | spans only {n_chars / t_spans:10.0f} chars/s")

    t_prep, prepared = best_of(lambda: [prepare_document(ex.tokenizer, t, ex.max_length, ex.stride, doc_index=d)
                                        for d, t in enumerate(texts)], args.repeat)
    encs = [e for e, _ in prepared]
    windows = [w for _, ws in prepared for w in ws]
    t_fwd, logits = best_of(lambda: predict_logits(ex.model, windows, ex.batch_size, ex.tokenizer.pad_token_id,
                                                   ex.device), args.repeat)
    n_tok = sum(len(w.input_ids) for w in windows)
    print(f"bare forward pass (batch {ex.batch_size}): {n_chars / t_fwd:10.0f} chars/s, {n_tok / t_fwd:10.0f} tokens/s "
          f"({len(windows)} windows, {n_tok} tokens incl. overlap and specials)")
    if args.stages:
        n_tags, o_index = ex.model.config.num_labels, o_tag_index(ex.model.config.id2label)

        def complete():
            i, out = 0, 0
            for t, (e, ws) in zip(texts, prepared):
                merged = merge_window_logits(len(e.ids), ws, logits[i:i + len(ws)], n_tags, o_index)
                i += len(ws)
                out += len(build_facts(t, decode(e, merged, ex.id2tag, ex.lexicon)))
            return out

        t_done, _ = best_of(complete, args.repeat)
        print(f"stages on one process: preparation {n_chars / t_prep:10.0f} chars/s ({t_prep:.2f} s) | forward "
              f"{n_chars / t_fwd:10.0f} chars/s ({t_fwd:.2f} s) | completion {n_chars / t_done:10.0f} chars/s "
              f"({t_done:.2f} s)")

    if not args.no_pipeline:
        norm = [normalize(t) for t in texts]
        tok = ex.tokenizer
        tok.model_max_length = ex.max_length
        pipe = pipeline("token-classification", model=ex.model, tokenizer=tok, aggregation_strategy="simple",
                        stride=ex.stride, device=ex.device)
        t_pipe, out = best_of(lambda: [pipe(n.text) for n in norm], args.repeat)
        theirs = [{(*strip_span(n.text, int(e["start"]), int(e["end"])), e["entity_group"]) for e in o}
                  for n, o in zip(norm, out)]  # (a "▁" token's offsets include the space before it)
        reference = []
        for e in encs:
            ws = [Window(0, a, [tok.cls_token_id, *e.ids[a:b], tok.sep_token_id])
                  for a, b in pipeline_window_bounds(len(e.ids), ex.max_length - 2, ex.stride)]
            lg = predict_logits(ex.model, ws, ex.batch_size, tok.pad_token_id, ex.device)
            reference.append(set(pipeline_decode(e, ws, lg, ex.id2tag)))
        ours = [{(*n.span_to_normalized(s.start, s.end), s.label) for s in sp} for n, sp in zip(norm, spans)]

        def share(a_sets, b_sets):
            same = sum(len(a & b) for a, b in zip(a_sets, b_sets))
            total = sum(len(a | b) for a, b in zip(a_sets, b_sets))
            return f"{same}/{total} ({100 * same / max(total, 1):.1f}%)"

        print(f"transformers pipeline: {n_chars / t_pipe:10.0f} chars/s ({t_pipe:.2f} s); nlp spans only is "
              f"{t_pipe / t_spans:.2f}x, end to end {t_pipe / t_full:.2f}x faster")
        print(f"identical spans, pipeline vs nlp's windows + forward pass decoded like the pipeline: "
              f"{share(theirs, reference)}")
        print(f"identical spans, pipeline vs nlp's default decoding: {share(theirs, ours)}")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
