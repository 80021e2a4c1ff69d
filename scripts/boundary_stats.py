"""How often gold span boundaries fall inside a token, per tokenizer (the issue's straddle figure).

    .venv/bin/python scripts/boundary_stats.py [MODEL ...]   (default: both embedded variants)

A boundary (a span's start or end) "straddles" when it lies strictly inside a token's character range in
the normalized text: the model then cannot place it exactly.
"""

from __future__ import annotations

import sys

from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from nlp.align import char_spans_to_normalized, encode, token_tags
from nlp.annotations import load_corpus
from nlp.builtin import resolve_model


def main(argv: list[str]) -> int:
    hf_logging.set_verbosity_error()
    models = argv or ["builtin:multilingual-e5-small", "builtin:e5-small-zh"]
    docs = load_corpus("annotations/gold")
    n_boundaries = 2 * sum(len(d.spans) for d in docs)
    print(f"{len(docs)} documents, {n_boundaries} gold span boundaries")
    for spec in models:
        tok = AutoTokenizer.from_pretrained(resolve_model(spec))
        straddles = tokens = 0
        for d in docs:
            enc = encode(tok, d.text)
            _, n = token_tags(enc, char_spans_to_normalized(d, enc.norm))
            straddles += n
            tokens += len(enc.ids)
        print(f"{spec:32} {tokens:6} tokens  boundaries inside a token: {straddles:4} "
              f"({100 * straddles / n_boundaries:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
