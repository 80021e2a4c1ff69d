"""Stage 3: tokenization and label alignment, both ways.

Forward (training): a document's normalized text is tokenized ONCE with character offsets, cut into
overlapping windows of `max_length` tokens (`stride` tokens shared between neighbours), and each token gets
the IOB2 tag of the gold span it begins or continues.

Backward (prediction): per-token logits of all windows are averaged where windows overlap, decoded to IOB2
spans over normalized characters, and mapped to ORIGINAL character offsets through the reader's map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .annotations import LABELS, Document, Span, strip_span
from .reader import NormalizedText, normalize

TAGS = ("O", *(f"{p}-{lab}" for lab in LABELS for p in ("B", "I")))
TAG2ID = {t: i for i, t in enumerate(TAGS)}
IGNORE = -100


@dataclass
class Encoded:
    """A whole document tokenized once: token ids with their normalized-character offsets."""

    norm: NormalizedText
    ids: list[int]
    offsets: list[tuple[int, int]]


@dataclass
class Window:
    doc_index: int
    first: int  # index of its first token in Encoded.ids
    input_ids: list[int]
    labels: list[int] | None = None


def encode(tokenizer, text: str, norm: NormalizedText | None = None) -> Encoded:
    norm = norm or normalize(text)
    enc = tokenizer(norm.text, add_special_tokens=False, return_offsets_mapping=True)
    return Encoded(norm=norm, ids=list(enc["input_ids"]), offsets=[tuple(o) for o in enc["offset_mapping"]])


def window_starts(n_tokens: int, body: int, stride: int) -> list[int]:
    """Start indices of windows of `body` tokens covering `n_tokens`, neighbours sharing `stride` tokens."""
    if n_tokens <= body:
        return [0]
    step = body - stride
    starts = list(range(0, n_tokens - body, step))
    starts.append(n_tokens - body)
    return starts


def make_windows(tokenizer, encoded: Encoded, max_length: int, stride: int, doc_index: int = 0,
                 token_tags: list[int] | None = None) -> list[Window]:
    body = max_length - 2
    if body < 1 or not 0 <= stride < body:
        raise ValueError(f"windows of max_length {max_length} need 0 <= stride < {body} (got stride {stride})")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = []
    for s in window_starts(len(encoded.ids), body, stride):
        e = min(s + body, len(encoded.ids))
        labels = None
        if token_tags is not None:
            labels = [IGNORE, *token_tags[s:e], IGNORE]
        out.append(Window(doc_index, s, [cls, *encoded.ids[s:e], sep], labels))
    return out


def char_spans_to_normalized(doc: Document, norm: NormalizedText) -> list[Span]:
    """Gold spans (original offsets) as spans over the normalized text."""
    out = []
    for sp in doc.spans:
        s, e = norm.span_to_normalized(sp.start, sp.end)
        out.append(Span(s, e, sp.label, norm.text[s:e]))
    return out


def token_tags(encoded: Encoded, spans: list[Span]) -> tuple[list[int], int]:
    """IOB2 tag id per token for normalized `spans`, and how many span boundaries fall inside a token.

    A token takes B- of a span that starts anywhere inside it, else I- of a span that covers its first
    character, else O. Tokens with empty offsets (a bare SentencePiece marker) are ignored in the loss."""
    n = len(encoded.norm.text)
    owner = [-1] * n
    for k, sp in enumerate(spans):
        for i in range(sp.start, sp.end):
            owner[i] = k
    starts = {sp.start: k for k, sp in enumerate(spans)}
    ends = {sp.end for sp in spans}
    tags: list[int] = []
    straddles = 0
    for s, e in encoded.offsets:
        if e <= s:
            tags.append(IGNORE)
            continue
        text = encoded.norm.text
        first = s
        while first < e - 1 and text[first].isspace():  # a "▁" token's offsets include the space before it
            first += 1
        straddles += sum(1 for i in range(first + 1, e) if i in starts or i in ends)
        begun = next((starts[i] for i in range(s, e) if i in starts), None)
        if begun is not None:
            tags.append(TAG2ID[f"B-{spans[begun].label}"])
        elif owner[s] >= 0:
            tags.append(TAG2ID[f"I-{spans[owner[s]].label}"])
        else:
            tags.append(TAG2ID["O"])
    return tags, straddles


def merge_window_logits(n_tokens: int, windows: list[Window], logits: list[np.ndarray]) -> np.ndarray:
    """Average the logits of every window that covers a token (special tokens dropped)."""
    n_tags = logits[0].shape[-1] if logits else len(TAGS)
    acc = np.zeros((n_tokens, n_tags), dtype=np.float32)
    cnt = np.zeros((n_tokens, 1), dtype=np.float32)
    for w, lg in zip(windows, logits):
        k = len(w.input_ids) - 2
        acc[w.first:w.first + k] += lg[1:1 + k]
        cnt[w.first:w.first + k] += 1
    return acc / np.maximum(cnt, 1)


def repair_iob2(tags: list[str]) -> list[str]:
    """Make a predicted tag sequence valid IOB2: an I-X that does not continue an X span opens one (B-X).
    This is the decoding rule of `decode`, so seqeval scores exactly the spans that inference reports."""
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


@dataclass(frozen=True)
class PredictedSpan:
    start: int  # original offsets
    end: int
    label: str
    text: str
    score: float  # mean probability of the span's tokens' tags


def decode(encoded: Encoded, token_logits: np.ndarray, id2tag: dict[int, str] | None = None) -> list[PredictedSpan]:
    """IOB2 decoding over tokens (an I- without its B- opens a span), mapped to ORIGINAL offsets."""
    id2tag = id2tag or dict(enumerate(TAGS))
    if len(encoded.ids) == 0:
        return []
    z = token_logits - token_logits.max(-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(-1, keepdims=True)
    best = probs.argmax(-1)
    spans: list[PredictedSpan] = []
    cur = None  # [label, start, end, [probs]]

    def close():
        if cur is not None:
            s, e = encoded.norm.span_to_original(cur[1], cur[2])
            orig = encoded.norm.original
            s, e = strip_span(orig, s, e)
            if e > s:
                spans.append(PredictedSpan(s, e, cur[0], orig[s:e], float(np.mean(cur[3]))))

    for t, (s, e) in enumerate(encoded.offsets):
        if e <= s:
            continue
        tag = id2tag[int(best[t])]
        p = float(probs[t, best[t]])
        if tag == "O":
            close()
            cur = None
            continue
        bio, lab = tag.split("-", 1)
        if bio == "B" or cur is None or cur[0] != lab:
            close()
            cur = [lab, s, e, [p]]
        else:
            cur[2] = e
            cur[3].append(p)
    close()
    return spans


def predict_logits(model, windows: list[Window], batch_size: int, pad_id: int, device) -> list[np.ndarray]:
    """Run `model` over windows in batches (sorted by length to limit padding); logits per window."""
    import torch

    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    out: list[np.ndarray | None] = [None] * len(windows)
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(windows[i].input_ids) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                w = windows[i].input_ids
                ids[r, :len(w)] = torch.tensor(w)
                mask[r, :len(w)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
            for r, i in enumerate(idx):
                out[i] = logits[r, :len(windows[i].input_ids)]
    return out  # type: ignore[return-value]


def predict_documents(model, tokenizer, texts: list[str], max_length: int, stride: int, batch_size: int = 16,
                      device=None) -> list[tuple[Encoded, np.ndarray]]:
    """Tokenize, window, predict and merge for many documents at once (windows of all documents are
    batched together). Returns each document's encoding and its merged per-token logits."""
    device = device or next(model.parameters()).device
    encs = [encode(tokenizer, t) for t in texts]
    windows: list[Window] = []
    for d, enc in enumerate(encs):
        windows.extend(make_windows(tokenizer, enc, max_length, stride, doc_index=d))
    logits = predict_logits(model, windows, batch_size, tokenizer.pad_token_id, device) if windows else []
    per_doc: list[list[int]] = [[] for _ in encs]
    for i, w in enumerate(windows):
        per_doc[w.doc_index].append(i)
    results = []
    n_tags = model.config.num_labels
    for d, enc in enumerate(encs):
        if not enc.ids:
            results.append((enc, np.zeros((0, n_tags), dtype=np.float32)))
            continue
        results.append((enc, merge_window_logits(len(enc.ids), [windows[i] for i in per_doc[d]],
                                                 [logits[i] for i in per_doc[d]])))
    return results
