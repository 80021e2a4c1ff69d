"""Kinds of span errors of cross-validation fold models, each document through the fold that held it out.

    .venv/bin/python scripts/span_errors.py --cv /tmp/cv2 [--show 10]

Per label: false positives that overlap no gold span, predicted spans that overlap a gold span of the same
label with other bounds (boundary), or only spans of another label (wrong label), and gold spans that no
prediction touches (missed). --show prints examples of each kind.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", required=True, help="an `nlp cv` output folder (one model folder per document)")
    ap.add_argument("--gold", default=str(ROOT / "annotations" / "gold"))
    ap.add_argument("--show", type=int, default=0, help="examples per kind")
    args = ap.parse_args(argv)

    from nlp.annotations import LABELS, load_corpus
    from nlp.infer import load

    counts, examples = Counter(), defaultdict(list)
    for doc in load_corpus(args.gold):
        fold = Path(args.cv) / Path(doc.doc).stem
        if not (fold / "config.json").is_file():
            print(f"{fold}: no fold model; skipped", file=sys.stderr)
            continue
        pred = {(s.start, s.end, s.label) for s in load(fold, facts=False).spans([doc.text])[0]}
        gold = {(s.start, s.end, s.label) for s in doc.spans}
        for s, e, lab in sorted(pred - gold):
            over = [g for g in gold if g[0] < e and s < g[1]]
            kind = ("false positive" if not over else "boundary" if any(g[2] == lab for g in over)
                    else "wrong label")
            counts[lab, kind] += 1
            examples[lab, kind].append((doc.text[s:e], [doc.text[g[0]:g[1]] for g in over]))
        for s, e, lab in sorted(gold - pred):
            if not any(p[0] < e and s < p[1] for p in pred):
                counts[lab, "missed"] += 1
                examples[lab, "missed"].append((doc.text[s:e], []))
    kinds = ("false positive", "boundary", "wrong label", "missed")
    print("label   " + "".join(f"{k:>16}" for k in kinds))
    for lab in LABELS:
        print(f"{lab:<8}" + "".join(f"{counts[lab, k]:>16}" for k in kinds))
    if args.show:
        for (lab, kind), ex in sorted(examples.items()):
            print(f"\n{lab} {kind}: " + "; ".join(f"{t!r}" + (f" (gold {g})" if g else "") for t, g in ex[:args.show]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
