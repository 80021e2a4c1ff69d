"""Turn a plain span list (JSON list of {start, end, label, text}) for one seed into a Label Studio store file.

Used to bring in annotation passes made outside Label Studio (a script, a second annotator's list):

    python scripts/spans_to_store.py SPANS.json --doc 000_bf5218bb65c99514.txt --out annotations/passes/000.A.json

The output is validated (offsets, text, labels, overlaps) before it is written, atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nlp.annotations import AnnotationError, Document, Span, load_documents, save_documents
from nlp.reader import read_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spans", type=Path)
    ap.add_argument("--doc", required=True, help="seed file name under --seeds")
    ap.add_argument("--seeds", type=Path, default=Path("seeds"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--task-id", type=int, default=None)
    args = ap.parse_args(argv)
    text = read_text(args.seeds / args.doc)
    items = json.loads(args.spans.read_text(encoding="utf-8"))
    spans = [Span(int(s["start"]), int(s["end"]), s["label"], s["text"]) for s in items]
    task_id = args.task_id if args.task_id is not None else int(args.doc.split("_")[0]) + 1
    tmp = args.out.with_suffix(".check.tmp")
    save_documents(tmp, [Document(doc=args.doc, text=text, spans=spans, task_id=task_id)])
    try:
        load_documents(tmp, args.seeds)
    except AnnotationError as e:
        tmp.unlink()
        print(f"error: {e}", file=sys.stderr)
        return 1
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(spans)} spans")
    return 0


if __name__ == "__main__":
    sys.exit(main())
