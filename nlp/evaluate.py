"""Stage 5: evaluation of a token-classification model on gold documents.

Two views of the same predictions:
- seqeval, strict IOB2, entity level, over each whole document's token sequence (windows merged); the
  predicted sequence is the tags of the spans inference reports (Viterbi-decoded, then tidied by the
  schema's boundary rules: `align.decode`), so both views score the spans that `nlp extract` reports;
- character-span exact match computed from spans directly on ORIGINAL offsets, so tokenization cannot
  flatter the figure (a span counts only if start, end and label are all right).
Both give precision, recall and F1 per label plus micro and macro averages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .align import (TAGS, PredictedSpan, char_spans_to_normalized, decode, predict_documents, read_lexicon,
                    spans_to_tags, token_tags)
from .annotations import LABELS, Document, atomic_write_json, atomic_write_text


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": n_gold}


def span_scores(gold: list[list[tuple[int, int, str]]], pred: list[list[tuple[int, int, str]]]) -> dict:
    """Exact-match scores of predicted (start, end, label) spans against gold, per label, micro, macro."""
    tp: Counter = Counter()
    npred: Counter = Counter()
    ngold: Counter = Counter()
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g), set(p)
        for s in gs:
            ngold[s[2]] += 1
        for s in ps:
            npred[s[2]] += 1
        for s in gs & ps:
            tp[s[2]] += 1
    out = {lab: prf(tp[lab], npred[lab], ngold[lab]) for lab in LABELS}
    out["micro"] = prf(sum(tp.values()), sum(npred.values()), sum(ngold.values()))
    out["macro"] = {k: float(np.mean([out[lab][k] for lab in LABELS])) for k in ("precision", "recall", "f1")}
    out["macro"]["support"] = out["micro"]["support"]
    return out


def seqeval_scores(gold_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    rep = classification_report(gold_tags, pred_tags, mode="strict", scheme=IOB2, output_dict=True,
                                zero_division=0)
    out = {}
    for lab in LABELS:
        r = rep.get(lab, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        out[lab] = {"precision": float(r["precision"]), "recall": float(r["recall"]),
                    "f1": float(r["f1-score"]), "support": int(r["support"])}
    for key, name in (("micro avg", "micro"), ("macro avg", "macro")):
        r = rep[key]
        out[name] = {"precision": float(r["precision"]), "recall": float(r["recall"]),
                     "f1": float(r["f1-score"]), "support": int(r["support"])}
    return out


@dataclass
class Evaluation:
    seqeval: dict
    spans: dict
    predictions: dict[str, list[PredictedSpan]]
    straddles: int
    gold_tags: list[list[str]]
    pred_tags: list[list[str]]
    gold_spans: list[list[tuple[int, int, str]]]
    pred_spans: list[list[tuple[int, int, str]]]

    def to_dict(self) -> dict:
        return {"seqeval": self.seqeval, "spans": self.spans, "boundary_straddles": self.straddles,
                "documents": sorted(self.predictions)}

    def markdown(self, title: str = "Evaluation") -> str:
        lines = [f"# {title}", "", f"Documents: {', '.join(sorted(self.predictions))}", ""]
        for name, table, what in (
                ("seqeval", self.seqeval, "strict IOB2, entity level, over whole-document token sequences"),
                ("spans", self.spans, "exact match of (start, end, label) on original character offsets")):
            lines += [f"## {name} ({what})", "", "| label | precision | recall | F1 | support |",
                      "|---|---:|---:|---:|---:|"]
            for lab in (*LABELS, "micro", "macro"):
                r = table[lab]
                lines.append(f"| {lab} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
            lines.append("")
        return "\n".join(lines)


def evaluate_model(model, tokenizer, docs: list[Document], max_length: int, stride: int,
                   batch_size: int = 16, lexicon: dict[str, list[str]] | None = None) -> Evaluation:
    """Predict every document (windows merged, decoded with the training `lexicon` when given) and score it
    against its gold spans."""
    if not docs:
        raise ValueError("no documents to evaluate")
    id2tag = {int(k): v for k, v in model.config.id2label.items()}
    results = predict_documents(model, tokenizer, [d.text for d in docs], max_length, stride, batch_size)
    gold_tags, pred_tags, gold_spans, pred_spans = [], [], [], []
    predictions: dict[str, list[PredictedSpan]] = {}
    straddles = 0
    for doc, (enc, logits) in zip(docs, results):
        g_ids, n_str = token_tags(enc, char_spans_to_normalized(doc, enc.norm))
        straddles += n_str
        gold_tags.append([TAGS[t] for t in g_ids if t >= 0])
        spans = decode(enc, logits, id2tag, lexicon)
        pred_tags.append(spans_to_tags(enc, spans))
        predictions[doc.doc] = spans
        gold_spans.append([(s.start, s.end, s.label) for s in doc.spans])
        pred_spans.append([(s.start, s.end, s.label) for s in spans])
    return Evaluation(seqeval=seqeval_scores(gold_tags, pred_tags), spans=span_scores(gold_spans, pred_spans),
                      predictions=predictions, straddles=straddles, gold_tags=gold_tags, pred_tags=pred_tags,
                      gold_spans=gold_spans, pred_spans=pred_spans)


def evaluate_saved(model_dir: str | Path, docs: list[Document], max_length: int | None = None,
                   stride: int | None = None, batch_size: int = 16) -> Evaluation:
    """`evaluate_model` for a saved model directory: its windows (`config.run_settings`: given, else as
    trained) and its training terms (lexicon.json), so that it scores what `nlp extract` returns."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .config import run_settings

    settings = run_settings(Path(model_dir), max_length, stride)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return evaluate_model(model, tokenizer, docs, settings["max_length"], settings["stride"], batch_size,
                          lexicon=read_lexicon(model_dir))


def pooled(evals: list[Evaluation]) -> Evaluation:
    """One evaluation over the union of several (e.g. the held-out documents of all CV folds)."""
    g = [t for e in evals for t in e.gold_tags]
    p = [t for e in evals for t in e.pred_tags]
    gs = [s for e in evals for s in e.gold_spans]
    ps = [s for e in evals for s in e.pred_spans]
    return Evaluation(seqeval=seqeval_scores(g, p), spans=span_scores(gs, ps),
                      predictions={k: v for e in evals for k, v in e.predictions.items()},
                      straddles=sum(e.straddles for e in evals), gold_tags=g, pred_tags=p, gold_spans=gs,
                      pred_spans=ps)


def write_report(ev: Evaluation, out_dir: str | Path, title: str = "Evaluation") -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "eval.json", ev.to_dict())
    atomic_write_text(out_dir / "eval.md", ev.markdown(title) + "\n")
    atomic_write_json(out_dir / "predictions.json", {
        doc: [{"start": s.start, "end": s.end, "label": s.label, "text": s.text, "score": round(s.score, 4)}
              for s in spans] for doc, spans in ev.predictions.items()})


def summary_line(ev: Evaluation) -> str:
    s = ev.seqeval
    return "seqeval micro F1 {:.3f} | ".format(s["micro"]["f1"]) + " ".join(
        f"{lab} {s[lab]['f1']:.3f}" for lab in LABELS) + " | span exact micro F1 {:.3f}".format(ev.spans["micro"]["f1"])

