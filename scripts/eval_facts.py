#!/usr/bin/env python
"""Build facts from spans of every seed and score them against the gold facts.

Spans come from the GOLD annotations (the fact builder alone), from a model (`--model DIR`: end to end), or
from the cross-validation folds of `nlp cv` (`--cv DIR`: each document through the model that did not train
on it, DIR/<doc stem>/). Prints fact-level precision/recall/F1 per document and overall, and each field's
accuracy over the VALUE spans; `--errors` lists every field that differs.

    .venv/bin/python scripts/eval_facts.py [--errors] [--model DIR | --cv DIR] [--docs NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp.annotations import load_corpus  # noqa: E402
from nlp.facts import SCORED_FIELDS, build_facts, fact_errors, reporting_period, score_facts  # noqa: E402


def evaluate(gold_dir: Path, facts_dir: Path, spans_of=None, only=None) -> tuple[dict, list[dict]]:
    """`spans_of(doc) -> spans` (default: the gold spans); `only`: document names to score."""
    docs = {d.doc: d for d in load_corpus(gold_dir) if not only or d.doc in only}
    spans_of = spans_of or (lambda d: d.spans)
    rows = []
    all_pred, all_gold = [], []
    for path in sorted(facts_dir.glob("*.json")):
        obj = json.loads(path.read_text(encoding="utf-8"))
        doc = docs.get(obj["doc"])
        if doc is None:
            continue
        spans = spans_of(doc)
        pred = build_facts(doc.text, spans)
        gold = obj["facts"]
        # keys are made unique per document for the overall score
        all_pred += [{**f.to_dict(), "value_span": [obj["doc"], *f.value_span]} for f in pred]
        all_gold += [{**g, "value_span": [obj["doc"], *g["value_span"]]} for g in gold]
        rows.append({"doc": obj["doc"], "score": score_facts(pred, gold),
                     "rp": reporting_period(doc.text, spans), "gold_rp": obj.get("reporting_period"),
                     "errors": fact_errors(pred, gold)})
    return score_facts(all_pred, all_gold), rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold", default=str(ROOT / "annotations" / "gold"))
    ap.add_argument("--facts", default=str(ROOT / "annotations" / "facts"))
    ap.add_argument("--errors", action="store_true", help="list every mismatching field")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="predict spans with this model directory (end to end)")
    src.add_argument("--cv", help="an `nlp cv` output folder: each document through its held-out fold's model")
    ap.add_argument("--docs", nargs="*", help="only these documents")
    args = ap.parse_args(argv)
    spans_of = None
    if args.model or args.cv:
        from nlp.infer import load

        cache: dict = {}

        def spans_of(doc):
            where = Path(args.model) if args.model else Path(args.cv) / Path(doc.doc).stem
            if where not in cache:
                cache.clear()
                cache[where] = load(where, facts=False)
            return cache[where].spans([doc.text])[0]

    overall, rows = evaluate(Path(args.gold), Path(args.facts), spans_of, set(args.docs or []))
    print(f"spans from: {'model ' + args.model if args.model else 'cv folds in ' + args.cv if args.cv else 'gold'}")
    head = f"{'document':<28}{'rp':>8}{'gold rp':>9}{'facts':>7}{'P':>8}{'R':>8}{'F1':>8}"
    print(head)
    for r in rows:
        s = r["score"]
        print(f"{r['doc']:<28}{str(r['rp']):>8}{str(r['gold_rp']):>9}{s['gold']:>7}"
              f"{s['precision']:>8.3f}{s['recall']:>8.3f}{s['f1']:>8.3f}")
    print(f"{'overall':<28}{'':>8}{'':>9}{overall['gold']:>7}{overall['precision']:>8.3f}"
          f"{overall['recall']:>8.3f}{overall['f1']:>8.3f}   ({overall['correct']} facts fully right)")
    print("\nfield accuracy over matched VALUE spans:")
    print("  " + "  ".join(f"{n} {overall['fields'][n]:.3f}" for n in SCORED_FIELDS))
    if args.errors:
        print("\nmismatches (doc, value span, value text, field: predicted | gold):")
        for r in rows:
            for span, vtext, name, p, g in r["errors"]:
                print(f"  {r['doc'][:3]} {span} {vtext!r:16} {name:<9} {p!r} | {g!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
