"""Stage 3: tokenization and label alignment, both ways.

Forward (training): a document's normalized text is tokenized ONCE with character offsets, cut into
overlapping windows of `max_length` tokens (`stride` tokens shared between neighbours), and each token gets
the IOB2 tag of the gold span it begins or continues.

Backward (prediction): the text is cut into windows that end at sentence ends; per-token logits are
averaged where windows overlap, decoded to the most probable valid IOB2 sequence in which no mention
starts inside a word (Viterbi; jieba's dictionary segmentation gives the words), turned into
spans mapped to ORIGINAL character offsets through the reader's map, and tidied by the schema's boundary
rules (`tidy_spans`).
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotations import _HAS_NUMERAL, LABELS, Document, Span, strip_span, value_extent
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


_SENTENCE_END = re.compile(r"[。！？!?；;\n]\s*$")


def figure_token_ranges(encoded: Encoded) -> list[tuple[int, int]]:
    """[first, end) token ranges of the runs of sentences that can hold a figure: those with a numeral
    (Arabic or Chinese digit, 翻倍; `annotations._HAS_NUMERAL`), and those whose figures come after them (a
    list's intro line, a table's header: `_with_figures_ahead`). A sentence without one can hold no VALUE
    (`value_extent` drops numeral-less spans) and no PERIOD naming a year, so `_figure_sentences_only` would
    drop every span predicted in it: prediction does not read it. Sentences are those of the rule, on the
    ORIGINAL text; consecutive kept sentences form one range (line breaks between them included), so a
    window still holds several sentences. On the seeds this skips about 30% of the text (BENCHMARKS.md)."""
    orig, norm = encoded.norm.original, encoded.norm
    kept_orig: list[tuple[int, int]] = []  # runs of consecutive kept sentences, the line breaks between included
    previous_kept = False
    sentences = list(_SENTENCE.finditer(orig))
    keeps = _with_figures_ahead(orig, sentences, {i for i, m in enumerate(sentences) if _HAS_NUMERAL.search(m.group())})
    for i, m in enumerate(sentences):
        keep = i in keeps
        if keep and previous_kept:
            kept_orig[-1] = (kept_orig[-1][0], m.end())
        elif keep:
            kept_orig.append((m.start(), m.end()))
        previous_kept = keep
    starts = [a for a, _ in kept_orig]

    def kept(pos: int) -> bool:  # original position inside a kept sentence
        i = bisect.bisect_right(starts, pos) - 1
        return i >= 0 and pos < kept_orig[i][1]

    out: list[tuple[int, int]] = []
    for t, (s, e) in enumerate(encoded.offsets):
        if e > s and (kept(norm.to_orig[s]) or kept(norm.to_orig[e - 1])):  # "▁2023" may start at a "\n"
            if out and out[-1][1] == t:
                out[-1] = (out[-1][0], t + 1)
            else:
                out.append((t, t + 1))
    return out


def sentence_window_bounds(encoded: Encoded, body: int, stride: int, min_fill: float = 0.5,
                           ranges: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """[first, end) token ranges of windows that end at a sentence end (。！？；, a line break) where one lies
    in the last half of the window, so that neighbours need not overlap; a window with no sentence end in
    reach (a very long sentence) is cut at `body` tokens and its neighbour starts `stride` tokens back.
    On the seeds this reads 23% fewer tokens than fixed windows of 128 with stride 32 and scores higher
    (BENCHMARKS.md): no token sits at the edge of a window without its sentence. `ranges`: cover only
    these token ranges (`figure_token_ranges`), each windowed on its own."""
    n, text = len(encoded.ids), encoded.norm.text
    clean = set()  # token indices a window may end before
    for i, (s, e) in enumerate(encoded.offsets):
        nxt = encoded.offsets[i + 1][0] if i + 1 < n else len(text)
        if _SENTENCE_END.search(text[s:e]) or "\n" in text[e:max(e, nxt)]:
            clean.add(i + 1)
        if text[s:s + 1] == "\n":  # a "▁" token whose offsets begin with the line break
            clean.add(i)
    out = []
    for lo, hi in (ranges if ranges is not None else [(0, n)]):
        s = lo
        while s < hi:
            e = min(s + body, hi)
            if e == hi:
                out.append((s, e))
                break
            cut = next((c for c in range(e, s + int(body * min_fill), -1) if c in clean), None)
            if cut is not None:
                out.append((s, cut))
                s = cut
            else:
                out.append((s, e))
                s = e - stride
    return out


def make_windows(tokenizer, encoded: Encoded, max_length: int, stride: int, doc_index: int = 0,
                 token_tags: list[int] | None = None, sentences: bool = False,
                 ranges: list[tuple[int, int]] | None = None) -> list[Window]:
    """Windows of at most `max_length` tokens with [CLS] and [SEP]: fixed ones sharing `stride` tokens
    (training's default), or `sentences=True`: cut at sentence ends (`sentence_window_bounds`; prediction
    always, over the `ranges` of `figure_token_ranges`; training with data.train_windows: sentences)."""
    body = max_length - 2
    if body < 1 or not 0 <= stride < body:
        raise ValueError(f"windows of max_length {max_length} need 0 <= stride < {body} (got stride {stride})")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    n = len(encoded.ids)
    if sentences:
        bounds = sentence_window_bounds(encoded, body, stride, ranges=ranges) if n else []
    else:
        bounds = [(s, min(s + body, n)) for s in window_starts(n, body, stride)]
    out = []
    for s, e in bounds:
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


def merge_window_logits(n_tokens: int, windows: list[Window], logits: list[np.ndarray],
                        n_tags: int | None = None, o_index: int = 0) -> np.ndarray:
    """Average the logits of every window that covers a token (special tokens dropped). A token no window
    covers (a sentence `figure_token_ranges` skips) is O for certain."""
    n_tags = n_tags or (logits[0].shape[-1] if logits else len(TAGS))
    acc = np.zeros((n_tokens, n_tags), dtype=np.float32)
    cnt = np.zeros((n_tokens, 1), dtype=np.float32)
    for w, lg in zip(windows, logits):
        k = len(w.input_ids) - 2
        acc[w.first:w.first + k] += lg[1:1 + k]
        cnt[w.first:w.first + k] += 1
    uncovered = cnt[:, 0] == 0
    acc[uncovered] = -1e4
    acc[uncovered, o_index] = 0.0
    return acc / np.maximum(cnt, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Per-token tag probabilities from logits (last axis)."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _viterbi(logp: np.ndarray, inside: np.ndarray, trans: np.ndarray, end: int | None = None,
             inword: np.ndarray | None = None, word_trans: np.ndarray | None = None) -> list[int]:
    """Best path under `trans` (0 or -inf) over `logp` (tokens x tags), not starting inside a span; ending
    on tag `end` when given. Into a token where `inword` is true, `word_trans` applies instead."""
    n, k = logp.shape
    score = np.where(inside, -np.inf, logp[0])
    back = np.zeros((n, k), dtype=np.int64)
    cols = np.arange(k)
    for t in range(1, n):
        cand = score[:, None] + (word_trans if inword is not None and inword[t] else trans)
        back[t] = cand.argmax(0)
        score = cand[back[t], cols] + logp[t]
    path = [int(score.argmax()) if end is None else end]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


@functools.lru_cache(maxsize=8)
def _transitions(tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Allowed tag transitions (a row's tag followed by a column's): IOB2 (I-X only after B-X or I-X), and
    the stricter set into a token inside a word (`word_bounds`): no mention starts there, unless one of
    another label hands over to it (快手 + 电商GMV, which jieba cuts 快|手电|商). Mentions may end inside a
    word (快手 of 快手电商生态 is a gold ENTITY); forbidding that too scored lower (BENCHMARKS.md)."""
    def iob2(a: str, b: str) -> bool:
        return not (b.startswith("I-") and a[2:] != b[2:])

    def in_word(a: str, b: str) -> bool:
        return not b.startswith("B-") or (a != "O" and a[2:] != b[2:])

    allowed = np.array([[iob2(a, b) for b in tags] for a in tags])
    word_allowed = allowed & np.array([[in_word(a, b) for b in tags] for a in tags])
    for table in (allowed, word_allowed):
        table.setflags(write=False)  # cached per tag set: shared by every document
    return allowed, word_allowed


def best_tags(token_logits: np.ndarray, id2tag: dict[int, str],
              inword: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """The most probable VALID IOB2 tag sequence (Viterbi over per-token log-probabilities, I-X allowed only
    after B-X or I-X) and the per-token probabilities. Scored on the seeds' cross-validation logits this beats
    per-token argmax plus repair by 0.05 micro F1 (BENCHMARKS.md): a weak I- no longer splits a span, a
    confident I- pulls its uncertain B- in. `inword` (per token, from `inside_words`): no word starts in the
    token, so no mention may start there either (`_transitions`).

    Exact, and fast: the per-token argmax path is the answer wherever it is valid, so Viterbi runs only on
    the stretches around an invalid step. A stretch ends after a token c whose argmax tag is not I-*, whose
    next token prefers B-X to I-X for every X, and where neither c nor c + 1 starts inside a word: some best
    path keeps c's argmax tag (it may follow any tag) and does not enter c + 1 inside a span (replacing I-X
    there by B-X costs nothing and stays valid), so the stretches on either side are independent problems."""
    probs = softmax(token_logits)
    n, k = probs.shape
    if n == 0:
        return [], probs
    logp = np.log(np.maximum(probs, 1e-30))
    tags = [id2tag[i] for i in range(k)]
    inside = np.array([t.startswith("I-") for t in tags])
    allowed, word_allowed = _transitions(tuple(tags))
    trans = np.where(allowed, 0.0, -np.inf)
    word_trans = np.where(word_allowed, 0.0, -np.inf)
    free = np.ones(n, bool) if inword is None else ~np.asarray(inword, bool)
    path = logp.argmax(1)
    ok = np.where(free[1:], allowed[path[:-1], path[1:]], word_allowed[path[:-1], path[1:]])
    bad = np.flatnonzero(~ok) + 1
    if inside[path[0]]:
        bad = np.concatenate([[0], bad])
    if len(bad) == 0:
        return path.tolist(), probs
    index = {t: i for i, t in enumerate(tags)}
    pairs = [(index.get("B-" + t[2:]), i) for i, t in enumerate(tags) if inside[i]]
    if any(b is None for b, _ in pairs):  # an I- without its B-: no safe cut, Viterbi over everything
        return _viterbi(logp, inside, trans, None, ~free, word_trans), probs
    b_idx, i_idx = np.array([b for b, _ in pairs], int), np.array([i for _, i in pairs], int)
    prefers_b = (logp[1:, b_idx] >= logp[1:, i_idx]).all(1)  # (an invalid step means some I- tag exists)
    cuts = np.flatnonzero(~inside[path[:-1]] & prefers_b & free[:-1] & free[1:])  # a stretch may end after these
    out = path.copy()
    done_until = -1
    for t in bad.tolist():
        if t <= done_until:
            continue
        i = np.searchsorted(cuts, t)  # cuts[i - 1] < t <= cuts[i]
        a = int(cuts[i - 1]) + 1 if i > 0 else 0
        b = int(cuts[i]) if i < len(cuts) else n - 1
        end = int(path[b]) if i < len(cuts) else None
        out[a:b + 1] = _viterbi(logp[a:b + 1], inside, trans, end, ~free[a:b + 1], word_trans)
        done_until = b
    return out.tolist(), probs


_WORDS = None  # jieba's tokenizer, loaded on first use
_WORDS_LOCK = threading.Lock()
_ASCII_SWITCH = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")


def word_bounds(text: str) -> np.ndarray:
    """Per position 0..len(text): True where a word of jieba's dictionary segmentation (no HMM guessing of
    new words) starts or ends, and where ASCII letters meet digits (jieba keeps DAU3 of DAU3.8亿 together).
    Every gold span of the seeds starts at such a boundary but five METRICs, each where a mention of another
    label ends inside a word: four 电商... after the ENTITY 快手 (jieba cuts 快手电商 快|手电|商), 日活 after the
    VALUE 2.6亿 (亿日 is a word). Decoding starts mentions only at a boundary or where another label hands
    over (`best_tags`): 本科工资 or nothing, not 科工资. Where the dictionary lacks a domain word (营收 is cut
    营|收) the rule simply allows more."""
    global _WORDS
    with _WORDS_LOCK:
        if _WORDS is None:
            import logging

            import jieba

            logging.getLogger("jieba").setLevel(logging.WARNING)  # no "Building prefix dict ..." on stderr
            tok = jieba.Tokenizer()
            tok.initialize()
            _WORDS = tok
    bounds = np.zeros(len(text) + 1, bool)
    bounds[0] = True
    pos = 0
    for w in _WORDS.cut(text, HMM=False):
        pos += len(w)
        bounds[pos] = True
    for m in _ASCII_SWITCH.finditer(text):
        bounds[m.start()] = True
    return bounds


def inside_words(encoded: Encoded, bounds: np.ndarray) -> np.ndarray:
    """Per token: True when no word starts anywhere in it (`word_bounds`), so no mention may start there. A
    token with no characters (a bare marker) takes the value of the next token that has some: a mention
    opened on it would start inside that token's word."""
    starts = np.concatenate([[0], np.cumsum(bounds[:-1])])  # starts[i]: word starts before position i
    out = np.zeros(len(encoded.offsets), bool)
    nxt = False
    for t in range(len(encoded.offsets) - 1, -1, -1):
        s, e = encoded.offsets[t]
        if e > s:
            nxt = starts[e] - starts[s] == 0
        out[t] = nxt
    return out


@dataclass(frozen=True)
class PredictedSpan:
    start: int  # original offsets
    end: int
    label: str
    text: str
    score: float  # mean probability of the span's tokens' tags


def tidy_spans(text: str, spans: list[PredictedSpan]) -> list[PredictedSpan]:
    """The schema's boundary rules applied to decoded spans (original offsets, in order, not overlapping).
    - Two spans of one label separated by nothing but spaces are one mention (the 856 gold spans hold one
      such pair; the tagger often splits a long metric in two).
    - A VALUE is snapped to its value expression (approximation word, currency, scale, unit:
      `annotations.value_extent`) and dropped when it holds no numeral or is part of a date, a clock time or
      a Latin-lettered code (`_not_a_figure`); a span wholly inside the snapped expression (人民币 tagged
      METRIC) is absorbed; a span after the value that the expression cuts into gives up its classifier or
      unit if two characters remain (超1.5亿 + 张图片 -> 超1.5亿张 + 图片), and otherwise the VALUE keeps its
      decoded bounds.
    - A METRIC loses a trailing linking verb (`_trim_metric`) and what may lead it without being part of it
      (`_metric_head`): subject and verb before a causative, creating or reporting verb, a discourse word, a
      causative verb or 其, a demonstrative with its word, the 通过 of a relative clause, 集团 / 本公司, a period
      word; a METRIC of nothing but a linking verb or a discourse word is dropped. A one-character ENTITY,
      METRIC or PERIOD (快 of 快手, 二 of 二季度) is a fragment and is dropped (the gold spans have none), and so is an ENTITY that is
      a common noun (集团, 集团层面, 公司, 平台: not a name; 本集团 / 本公司 are); a PERIOD gets back the
      deictic word right before it (季度 -> 该季度), and the quarter an ENTITY starts with (Q4快手 -> Q4 + 快手).
    - An ENTITY, METRIC or PERIOD in a sentence without a VALUE is dropped (`_figure_sentences_only`; a
      list's intro line and a table's rows share the figures of the list and the table).
    BENCHMARKS.md has what each rule is worth on the seeds' cross-validation folds."""
    stamps = [m.span() for m in _TIMESTAMP.finditer(text)] if any(sp.label == "VALUE" for sp in spans) else []
    merged: list[PredictedSpan] = []
    for sp in spans:
        prev = merged[-1] if merged else None
        if prev is not None and prev.label == sp.label and not text[prev.end:sp.start].strip():
            a, b = prev.end - prev.start, sp.end - sp.start
            merged[-1] = PredictedSpan(prev.start, sp.end, sp.label, text[prev.start:sp.end],
                                       (prev.score * a + sp.score * b) / (a + b))
        else:
            merged.append(sp)
    snapped: list[tuple[PredictedSpan, PredictedSpan]] = []  # (tidied, as decoded)
    for sp in merged:
        new = sp
        if sp.label != "VALUE" and len(sp.text.replace(" ", "")) < 2:
            continue
        if sp.label == "ENTITY" and _GENERIC_ENTITY.fullmatch(re.sub(_SPACE, "", sp.text)):
            continue
        if sp.label == "VALUE":
            ext = value_extent(text, sp.start, sp.end)
            if ext is None or _not_a_figure(text, *ext, stamps):
                continue
            new = PredictedSpan(ext[0], ext[1], sp.label, text[ext[0]:ext[1]], sp.score)
        snapped.append((new, sp))
    # a span lying wholly inside a snapped value expression (人民币 tagged METRIC) is part of the value
    values = sorted((new.start, new.end) for new, _ in snapped if new.label == "VALUE")
    value_starts = [v[0] for v in values]

    def inside_a_value(sp: PredictedSpan) -> bool:  # the value starting last at or before it (no overlaps)
        i = bisect.bisect_right(value_starts, sp.start) - 1
        return i >= 0 and sp.end <= values[i][1]

    snapped = [(new, sp) for new, sp in snapped if new.label == "VALUE" or not inside_a_value(sp)]
    out: list[tuple[PredictedSpan, PredictedSpan]] = []
    for new, sp in snapped:
        if out and out[-1][0].end > new.start:
            prev, prev_orig = out[-1]
            if prev_orig.end <= new.start:  # the previous span's snap reached into this one
                rest = strip_span(text, prev.end, new.end)
                if (prev.label == "VALUE" and new.label != "VALUE" and rest[1] - rest[0] >= 2
                        and not _HAS_NUMERAL.search(text, new.start, prev.end)
                        and word_bounds(text[new.start:new.end])[prev.end - new.start]):
                    # the value's classifier or unit, tagged as the start of this span (超1.5亿 + 张图片, 6.4亿 +
                    # 位用户), is the value's (guideline decision 25) and the span keeps the rest; not when the
                    # classifier begins a word of the span (100万 + 个人用户, 超3000万 + 家庭用户)
                    new = PredictedSpan(rest[0], rest[1], new.label, text[rest[0]:rest[1]], new.score)
                else:  # undo the snap
                    out[-1] = (prev_orig, prev_orig)
            elif new.label == "VALUE" and prev.end <= sp.start and prev.start < new.start:
                # the value's currency or approximation word was tagged as the end of the span before it
                cut = _trim_metric(text, prev.start, new.start) if prev.label == "METRIC" else new.start
                out.pop()
                if cut > prev.start:
                    out.append((PredictedSpan(prev.start, cut, prev.label, text[prev.start:cut], prev.score),) * 2)
            elif prev.end <= sp.start:
                new = sp
            else:
                continue
        if new.label == "METRIC":
            cut = _trim_metric(text, new.start, new.end)
            if cut <= new.start or _METRIC_DISCOURSE_LEAD.fullmatch(text, new.start, cut):
                continue  # nothing but a linking verb or a discourse word (不过)
            head = _metric_head(text, new.start, cut)
            new = PredictedSpan(head, cut, new.label, text[head:cut], new.score)
        if new.label == "PERIOD" and new.start > 0 and text[new.start - 1] in _DEICTIC \
                and _PERIOD_HEAD.match(new.text) and not (out and out[-1][0].end >= new.start):
            new = PredictedSpan(new.start - 1, new.end, new.label, text[new.start - 1:new.end], new.score)
        out.append((new, sp))
    return _figure_sentences_only(text, _entity_quarters(text, _period_quarters(text, [new for new, _ in out])))


# 2024-11-25 14:10:00 +0800 (an article's metadata), 2024/11/25, 14:10:05: a date, or a clock time with a date or
# with seconds, holds numbers, not figures. A bare 14:10 is left alone (1:10 may be a ratio), and so is a
# digit run glued to a letter or digit before it (Q2:15.3亿元, 2024:10亿元).
_CLOCK = r"(?:[01]?\d|2[0-3]):[0-5]\d"
_TIMESTAMP = re.compile(rf"(?<![A-Za-z0-9.])(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}"
                        rf"(?:[ T]+{_CLOCK}(?::[0-5]\d)?(?:\s*[+-]\d{{2}}:?\d{{2}}(?![\d.%\u4e00-\u9fff]))?)?"
                        rf"|{_CLOCK}:[0-5]\d)(?![\d.%])")
# 1080p, 5G, 3D: a number that goes on in ONE Latin letter is part of a name or code; K, W (the value's own
# thousand and ten thousand), M, B (million, billion) and x (times) are not, nor a unit of letters (2.1pct, 50bp)
_CODE_LETTER = re.compile(r"[AC-JLN-VYZac-jln-vyz](?![A-Za-z0-9])")


def _not_a_figure(text: str, start: int, end: int, stamps: list[tuple[int, int]]) -> bool:
    """A value expression that is part of a date or timestamp (`_TIMESTAMP`; `stamps` their spans, in order)
    or of a name or code (`_CODE_LETTER` right after a final digit); no gold VALUE is either."""
    if end > start and text[end - 1].isdigit() and _CODE_LETTER.match(text, end):
        return True
    i = bisect.bisect_left(stamps, (end,))  # stamps are in order and do not overlap
    return i > 0 and stamps[i - 1][1] > start


_SPACE = r"[ \t\u00a0\u3000]"
"""Spaces the rules below allow inside and around a word (PDF and HTML text is full of them)."""


def _spaced(word: str) -> str:
    """A regex for `word` with any run of `_SPACE` between its characters: 集团 -> 集[ ...]*团."""
    return (_SPACE + "*").join(map(re.escape, word))


_PERIOD_QUARTER = re.compile(_SPACE + r"*(?:[QH][1-4]|[上下]半年|第?[一二三四1-4]季度?)")


def _period_quarters(text: str, spans: list[PredictedSpan]) -> list[PredictedSpan]:
    """A PERIOD ending in 年 takes the quarter or half right after it (2024年 + Q4通 -> 2024年Q4): what it cuts
    from the span after it is lost to that span (dropped if under two characters are left); never from a
    VALUE."""
    spans = list(spans)
    for k, sp in enumerate(spans):
        if sp is None or sp.label != "PERIOD" or not sp.text.endswith("年"):
            continue
        m = _PERIOD_QUARTER.match(text, sp.end)
        if not m:
            continue
        e = m.end()
        after = []  # the spans it cuts into (in order: stop at the first one past it)
        for j in range(k + 1, len(spans)):
            if spans[j] is not None:
                if spans[j].start >= e:
                    break
                after.append(j)
        if any(spans[j].label == "VALUE" for j in after):
            continue
        for j in after:
            nx = spans[j]
            spans[j] = None if nx.end - e < 2 else PredictedSpan(e, nx.end, nx.label, text[e:nx.end], nx.score)
        spans[k] = PredictedSpan(sp.start, e, sp.label, text[sp.start:e], sp.score)
    return [sp for sp in spans if sp is not None]


_ENTITY_QUARTER = re.compile(r"[QH][1-4](?![A-Za-z0-9])" + _SPACE + "*")  # not H3 of H3C


def _entity_quarters(text: str, spans: list[PredictedSpan]) -> list[PredictedSpan]:
    """An ENTITY that starts with a quarter or half (Q4快手, Q4快聘: seed 004's fold model; no gold ENTITY
    starts with one) hands it to a PERIOD of its own (a year PERIOD right before it has already taken it:
    `_period_quarters`)."""
    out: list[PredictedSpan] = []
    for sp in spans:
        m = _ENTITY_QUARTER.match(text, sp.start, sp.end) if sp.label == "ENTITY" else None
        if m is None or sp.end - m.end() < 2:
            out.append(sp)
            continue
        out.append(PredictedSpan(sp.start, sp.start + 2, "PERIOD", text[sp.start:sp.start + 2], sp.score))
        out.append(PredictedSpan(m.end(), sp.end, sp.label, text[m.end():sp.end], sp.score))
    return out


_SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]*")
_YEAR = re.compile(r"(?:19|20)\d\d|[一二]〇[一二三四五六七八九〇零]{2}|二零[一二三四五六七八九〇零]{2}")


def _with_figures_ahead(text: str, sentences: list[re.Match], with_figure: set[int]) -> set[int]:
    """`with_figure` (indices of `sentences`, `_SENTENCE` matches in `text`) plus the sentences whose figures
    come after them: one that introduces a list (ends with a colon, `**核心数据：**` too) right before a
    sentence with a figure, and every row of a table (its header above all) with a figure in a row below it.
    A blank line ends a list or a table."""
    out = set(with_figure)
    is_row = [m.group().count("|") >= 2 for m in sentences]
    for i in range(len(sentences) - 2, -1, -1):  # backwards: a table's figures reach its header row
        if i + 1 not in out or text.count("\n", sentences[i].end(), sentences[i + 1].start()) > 1:
            continue
        if is_row[i] and is_row[i + 1] or sentences[i].group().rstrip(" *\t").endswith((":", "：")):
            out.add(i)
    return out


def _figure_sentences_only(text: str, spans: list[PredictedSpan]) -> list[PredictedSpan]:
    """ENTITY, METRIC and PERIOD mark the mentions a figure uses (SCHEMA.md): drop those in a sentence with
    no VALUE, except a PERIOD that names a year (a title's or an opening's reporting period). A sentence that
    introduces a list (`快手科技2024年第三季度的业绩情况如下：`) counts as having the figures of the line after
    it, and every row of a table (its header: `| 转化效果提升 |`) the figures of the table. 498 of the 501
    gold ENTITY/METRIC/PERIOD spans share their sentence, list or table with a VALUE, and 2 of the other 3
    name a year."""
    sentences = list(_SENTENCE.finditer(text))
    if not sentences:
        return spans
    starts = [m.start() for m in sentences]
    sentence_of = lambda pos: bisect.bisect_right(starts, pos) - 1  # noqa: E731
    with_figure = _with_figures_ahead(text, sentences, {sentence_of(sp.start) for sp in spans if sp.label == "VALUE"})
    return [sp for sp in spans if sp.label == "VALUE" or sentence_of(sp.start) in with_figure
            or (sp.label == "PERIOD" and _YEAR.search(sp.text))]


# 该季度, 上季度, 本月, 今年, 去年同期, 上半年: the deictic word is part of the PERIOD (17 gold PERIODs begin with
# one, none is preceded by one); the tagger sometimes leaves it out (季度 for 该季度).
_DEICTIC = "该該本上当當今去同前"
_PERIOD_HEAD = re.compile(r"季度|季|年|月|期|半年|周|週")

_METRIC_TAIL = re.compile(r"(?:达到|達到|达|達|为|為|至|到|约|約|是|了|在|实现|實現|实|實|累计|累計|累|保持|同比|环比|環比|增长|增長|"
                          r"提升|下降|" + _SPACE + r")+$")


# 集团, 集团层面, 公司, 平台 tagged ENTITY (a model that learned 本集团 from filings): a common noun names no one; the
# facts fall back to the entity before or the document's (seed 003's 集团总收入 is 快手's)
_GENERIC_ENTITY = re.compile(r"(?:集团|集團|公司|平台)(?:层面|層面)?(?:季度)?")  # 集团层面季 度: the period word glued


# 集团总收入, 集团层面的净利润, 本公司的毛利: the group (本集团 / 本公司 is an ENTITY in filings) is not part of the
# METRIC (guideline: leave out possessives and the entity; 11 mentions of 集团 in the seeds, none inside a span)
_METRIC_LEAD = re.compile(f"(?:本?{_spaced('集团')}|本?{_spaced('公司')})(?:{_SPACE}*{_spaced('层面')})?{_SPACE}*的?{_SPACE}*")


# 季度净利润, 全年毛利率: a period word is the PERIOD's, not the METRIC's (no gold METRIC starts with one; 年销售额
# does, hence two-character words only)
_METRIC_PERIOD_LEAD = re.compile(f"[本该當当]?{_SPACE}*(?:{'|'.join(map(_spaced, ('季度', '年度', '全年', '月度')))})"
                                 f"{_SPACE}*的?{_SPACE}*")


# 不过平均月活用户, 最终完成消费: a conjunction or discourse word opening the clause (no gold METRIC starts with
# one); 最终 only before a verb (最终消费支出, 最终用户数 are metrics of their own)
_METRIC_DISCOURSE_LEAD = re.compile(r"(?:不过|不過|而且|并且|並且|但是|其中|同时|同時|此外|另外|而|但|"
                                    r"(?:最终|最終)(?=完成|实现|實現|达成|達成|转化|轉化|成交|购买|購買|下单|下單))(?:[,，、]|"
                                    + _SPACE + ")*")


# 使服务曝光量, 让短剧营销消耗: a causative verb opens the clause, not the metric, and neither does the possessive
# 其 of 其客户平均获客成本 (guideline: leave out possessives; no gold METRIC starts with one). Only a word of its
# own: 使用, 使命, 让利, 让渡, 令牌, 其他, 其余 keep their first character.
_METRIC_CAUSE_LEAD = re.compile(r"(?:使得|使|让|讓|令|其)" + _SPACE + "*")
# 通过创新互动玩法实现的订单量: the relative clause stays, its leading 通过 ("by means of") does not (guideline,
# decision 19); 通过人数 and 通过审核的商家数 (通过 "passed") keep it
_METRIC_MEANS_LEAD = re.compile(r"(?:通过|通過)" + _SPACE + r"*(?=[^的]{2,}(?:实现|實現|带动|帶動|带来|帶來|产生|產生)的)")
# 模式使服务曝光量, 助农带动返乡创业人员, 直接创造就业岗位, 评测显示其综合效果: a causative, creating or reporting
# verb inside the span is the clause's predicate, and the metric is its object. Only a verb that is a word of its
# own, not the first word (带动就业人数 is a gold METRIC) and with no 的 after it (冬季旅游带动的新增就业岗位: a relative clause that
# defines a subset stays, guideline decision 19); no gold METRIC is cut by it.
_METRIC_INNER_VERB = re.compile(r"使得|使|带动|帶動|创造|創造|显示|顯示|表明|指出")


def _inner_verb_lead(text: str, start: int, end: int) -> int:
    """End of the last causative, creating or reporting verb inside text[start:end] (`_METRIC_INNER_VERB`), else
    `start`."""
    seg = text[start:end]
    cut = start
    bounds = None
    for m in _METRIC_INNER_VERB.finditer(seg):
        a, b = m.span()
        if a == 0 or "的" in seg[b:] or len(seg) - b < 2:
            continue
        bounds = word_bounds(seg) if bounds is None else bounds
        if bounds[a] and bounds[b]:
            cut = start + b
    return cut


# 该景区淡季客流, 该商户客单价: a demonstrative and the one word it points at are the subject, not the metric (no
# gold METRIC starts with one); 该季度 is left to the period rule
_DEMONSTRATIVE = "该該这這此"


def _demonstrative_lead(text: str, start: int, end: int) -> int:
    """End of a leading demonstrative word + the word after it (+ 的) in text[start:end], else `start`
    (此前 is one word, not 此 + 前)."""
    if text[start:start + 1] not in _DEMONSTRATIVE or not text[start:start + 1] or \
            _METRIC_PERIOD_LEAD.match(text, start, end):
        return start
    bounds = np.flatnonzero(word_bounds(text[start:end]))
    if len(bounds) < 4 or bounds[1] != 1:  # 该 a word of its own, and something left after the word it points at
        return start
    cut = start + int(bounds[2])
    return cut + 1 if text[cut:cut + 1] == "的" else cut


def _word_lead(lead: re.Pattern):
    """`lead` as a head rule that cuts only at a word boundary of jieba's segmentation (使 of 使命 is no verb)."""
    def cut(text: str, start: int, end: int) -> int:
        m = lead.match(text, start, end)
        if not m:
            return start
        word_end = len(text[start:m.end()].rstrip())
        return m.end() if word_bounds(text[start:end])[word_end] else start
    return cut


def _metric_head(text: str, start: int, end: int) -> int:
    """Start of a METRIC span without the subject and verb before a causative, creating or reporting verb inside
    it (模式使服务曝光量), a leading discourse word (不过, 其中, 同时, 最终 ...), causative verb or possessive (使, 让,
    其), demonstrative and its word (该景区), 通过 of a relative clause, 集团 / 本公司 (层面)(的) or period word
    (季度, 年度, 全年, 月度), if two characters or more remain."""
    def match(lead):
        return lambda t, a, b: (m.end() if (m := lead.match(t, a, b)) else a)

    # in this order: 评测显示其综合效果 loses 评测显示 then 其, 该区域通过…实现的就业人数 loses both 该区域 and 通过,
    # 通过该平台实现的GMV only 通过 (the relative clause stays)
    for lead in (_inner_verb_lead, match(_METRIC_DISCOURSE_LEAD), _word_lead(_METRIC_CAUSE_LEAD), _demonstrative_lead,
                 match(_METRIC_MEANS_LEAD), match(_METRIC_LEAD), match(_METRIC_PERIOD_LEAD)):
        cut = lead(text, start, end)
        if end - cut >= 2:
            start = cut
    return start


def _trim_metric(text: str, start: int, end: int) -> int:
    """End of a METRIC span without a trailing verb or linking word (达, 为, 至, 约, 实现, 累计, 保持, 同比,
    增长 ...: never part of a metric name; no gold METRIC ends with one)."""
    m = _METRIC_TAIL.search(text, start, end)
    return m.start() if m else end


def decode(encoded: Encoded, token_logits: np.ndarray, id2tag: dict[int, str] | None = None,
           lexicon: dict[str, list[str]] | None = None) -> list[PredictedSpan]:
    """Viterbi IOB2 decoding over tokens (`best_tags`; no mention starts inside a word, `word_bounds`),
    training ENTITY names the tagger left out tagged (`recall_terms`), mapped to ORIGINAL offsets, tidied
    (`tidy_spans`), ENTITY and METRIC fragments extended to the training data's terms (`extend_to_terms`);
    the two lexicon steps when the model directory has a lexicon."""
    id2tag = id2tag or dict(enumerate(TAGS))
    if len(encoded.ids) == 0:
        return []
    best, probs = best_tags(token_logits, id2tag, inside_words(encoded, word_bounds(encoded.norm.text)))
    if lexicon:
        best = recall_terms(encoded, best, id2tag, lexicon)
    spans: list[PredictedSpan] = []
    cur = None  # [label, start, end, [probs]]
    orig = encoded.norm.original

    def close():
        if cur is not None:
            s, e = encoded.norm.span_to_original(cur[1], cur[2])
            s, e = strip_span(orig, s, e)
            if e > s:
                spans.append(PredictedSpan(s, e, cur[0], orig[s:e], float(np.mean(cur[3]))))

    for t, (s, e) in enumerate(encoded.offsets):
        if e <= s:
            continue
        tag = id2tag[best[t]]
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
    return extend_to_terms(encoded.norm, tidy_spans(orig, spans), lexicon)


LEXICON_FILE = "lexicon.json"
LEXICON_LABELS = ("ENTITY", "METRIC")


def build_lexicon(docs: list[Document]) -> dict[str, list[str]]:
    """The ENTITY and METRIC terms of the gold spans of `docs` (normalized like the model's text, two
    characters or more), per label: what training writes beside the model as lexicon.json."""
    terms: dict[str, set[str]] = {lab: set() for lab in LEXICON_LABELS}
    for doc in docs:
        for sp in doc.spans:
            if sp.label in terms:
                t = normalize(sp.text).text
                if len(t) >= 2:
                    terms[sp.label].add(t)
    return {lab: sorted(ts) for lab, ts in terms.items()}


def read_lexicon(model_dir: str | Path) -> dict[str, list[str]] | None:
    """The lexicon.json a training run wrote beside its model, or None (a model trained elsewhere)."""
    path = Path(model_dir) / LEXICON_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                               for v in data.values())):
            raise ValueError("expected {label: [term, ...]}")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a lexicon ({e})") from None
    return data


RECALL_MIN_CHARS = 3
"""Shortest training ENTITY name `recall_terms` tags (BENCHMARKS.md: with two-character names too, 快手 is
tagged where the gold leaves it untagged, as in 可灵AI是快手自研的..., and the figures go to it)."""


@functools.lru_cache(maxsize=8)
def _names_pattern(terms: tuple[str, ...], min_chars: int) -> re.Pattern | None:
    """One regular expression for the ENTITY `terms` of `min_chars` or more (None if there are none), longest
    first: the longest name at a position wins. Built once per lexicon."""
    names = sorted({t for t in terms if len(t) >= min_chars}, key=lambda t: (-len(t), t))
    return re.compile("|".join(map(re.escape, names))) if names else None


def recall_terms(encoded: Encoded, best: list[int], id2tag: dict[int, str],
                 lexicon: dict[str, list[str]]) -> list[int]:
    """`best` (tag ids per token) with every occurrence of a training ENTITY name (lexicon.json, three
    characters or more) that the tagger left entirely outside mentions tagged ENTITY: 快手科技 and 可灵AI in
    the opening sentences of seeds 000 and 002, which some fold models missed with a mean ENTITY probability
    under 0.05 (a threshold on it kept the gain only at 0.05 or below: BENCHMARKS.md). The name must cover
    whole tokens (a token's leading space aside), not run on in Latin letters or digits (可灵AI of 可灵AIGC),
    and not touch an ENTITY the tagger found (the two would be joined). One regular expression over the
    text."""
    pattern = _names_pattern(tuple(lexicon.get("ENTITY", ())), RECALL_MIN_CHARS)
    tag2id = {t: i for i, t in id2tag.items()}
    b_tag, i_tag = tag2id.get("B-ENTITY"), tag2id.get("I-ENTITY")
    if pattern is None or b_tag is None or i_tag is None or not best:
        return best
    text = encoded.norm.text
    outside = [id2tag[t] == "O" for t in best]
    entity = {b_tag, i_tag}
    starts, ends = {}, {}
    for t, (s, e) in enumerate(encoded.offsets):
        if e > s:
            s += len(text[s:e]) - len(text[s:e].lstrip())  # "▁OP" of " OPPO" starts at O
            starts.setdefault(s, t)
            ends[e] = t
    out = list(best)
    for m in pattern.finditer(text):
        a, z = m.span()
        t0, t1 = starts.get(a), ends.get(z)
        if t0 is None or t1 is None or not all(outside[t0:t1 + 1]):
            continue
        if (a > 0 and _is_ascii_alnum(text[a - 1]) and _is_ascii_alnum(text[a])) or \
                (z < len(text) and _is_ascii_alnum(text[z - 1]) and _is_ascii_alnum(text[z])):
            continue
        if (t0 > 0 and out[t0 - 1] in entity) or (t1 + 1 < len(out) and out[t1 + 1] in entity):
            continue
        out[t0] = b_tag
        out[t0 + 1:t1 + 1] = [i_tag] * (t1 - t0)
    return out


def _is_ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def extend_to_terms(norm: NormalizedText, spans: list[PredictedSpan],
                    lexicon: dict[str, list[str]] | None) -> list[PredictedSpan]:
    """A predicted ENTITY or METRIC that lies strictly inside an occurrence of a term the training data
    labelled the same way is extended to the whole term (the longest such occurrence) unless that would
    reach into a neighbouring span: 快手科 -> 快手科技, 他服务收入 -> 其他服务收入, 经调整净利 -> 经调整净利润. One
    exception each way, where the tagger put a boundary inside a name: an ENTITY may reach into the METRIC
    right after it, which then starts after the term (and a linking 的), if two characters of it remain
    (可灵 + AI的用户 -> 可灵AI + 用户); a METRIC may reach back into the PERIOD right before it, which then ends
    where the term starts, if two characters of it remain (第二季度线 + 上营销服务收入 -> 第二季度 + 线上营销服务收入). Terms
    are matched in the normalized text (Traditional and Simplified alike). Spans are never shortened: a
    term inside a longer prediction says nothing about where the prediction should end (shrinking to terms
    cost 0.06 micro F1 in cross-validation, BENCHMARKS.md). Cost: the substrings around each span up to the
    longest term, whatever the size of the lexicon or the text."""
    if not lexicon or not spans:
        return spans
    terms = {lab: set(lexicon.get(lab, ())) for lab in LEXICON_LABELS}
    longest = {lab: max(map(len, ts), default=0) for lab, ts in terms.items()}
    text, orig = norm.text, norm.original
    spans = list(spans)
    out: list[PredictedSpan] = []
    for k, sp in enumerate(spans):
        ts = terms.get(sp.label)
        if ts:
            try:
                ns, ne = norm.span_to_normalized(sp.start, sp.end)
            except ValueError:  # nothing of it is in the model's text
                out.append(sp)
                continue
            width, best = longest[sp.label], None
            for a in range(max(0, ne - width), ns + 1):
                for b in range(min(len(text), a + width), max(ne, a + 1) - 1, -1):  # longest first
                    if b - a > ne - ns and text[a:b] in ts and (best is None or b - a > best[1] - best[0]):
                        best = (a, b)
                        break
            if best is not None:
                s, e = norm.span_to_original(*best)
                prev = out[-1] if out else None
                nxt = spans[k + 1] if k + 1 < len(spans) else None
                if (nxt is not None and e > nxt.start and sp.label == "ENTITY" and nxt.label == "METRIC"
                        and (prev is None or prev.end <= s)):
                    # the tagger put the ENTITY/METRIC boundary inside the entity's name (可灵|AI的用户,
                    # 快手应|用 的互关用户对数): the METRIC starts after the term, less a linking 的
                    m = _ENTITY_LINK.match(orig, e, nxt.end)
                    if e < nxt.end and nxt.end - m.end() >= 2:
                        spans[k + 1] = nxt = PredictedSpan(m.end(), nxt.end, nxt.label, orig[m.end():nxt.end],
                                                           nxt.score)
                if (prev is not None and prev.end > s and sp.label == "METRIC" and prev.label == "PERIOD"
                        and (nxt is None or e <= nxt.start)):
                    # the PERIOD ran into the metric's name (第二季度线 + 上营销服务收入): it ends where the term starts
                    ps, pe = strip_span(orig, prev.start, s)
                    if pe - ps >= 2:
                        out[-1] = prev = PredictedSpan(ps, pe, prev.label, orig[ps:pe], prev.score)
                if (prev is None or prev.end <= s) and (nxt is None or e <= nxt.start):
                    sp = PredictedSpan(s, e, sp.label, orig[s:e], sp.score)
        out.append(sp)
    return out


_ENTITY_LINK = re.compile(f"{_SPACE}*的?{_SPACE}*")


def spans_to_tags(encoded: Encoded, spans: list[PredictedSpan]) -> list[str]:
    """IOB2 tags of the scored tokens (those `token_tags` does not ignore) for decoded spans: what seqeval
    scores, so that it scores exactly the spans inference reports."""
    norm = []
    for sp in spans:
        s, e = encoded.norm.span_to_normalized(sp.start, sp.end)
        norm.append(Span(s, e, sp.label, encoded.norm.text[s:e]))
    ids, _ = token_tags(encoded, norm)
    return [TAGS[i] for i in ids if i >= 0]


def pipeline_window_bounds(n_tokens: int, body: int, stride: int) -> list[tuple[int, int]]:
    """The windows of a fast tokenizer's overflow (transformers' pipeline with `stride`): every `body -
    stride` tokens, the last one whatever remains."""
    out, s = [], 0
    while True:
        out.append((s, min(s + body, n_tokens)))
        if s + body >= n_tokens:
            return out
        s += body - stride


def pipeline_decode(encoded: Encoded, windows: list[Window], logits: list[np.ndarray],
                    id2tag: dict[int, str]) -> list[tuple[int, int, str]]:
    """What `pipeline("token-classification", aggregation_strategy="simple", stride=...)` returns for these
    windows and logits, as (start, end, label) over the normalized text: per window, argmax tags grouped
    (a B- or another label starts a group), O groups dropped; overlapping groups of neighbouring windows
    resolved like the pipeline (the longer, then the higher score). Not the decoding `nlp` uses (see
    `decode`): it exists to prove that our windows, offsets and batched forward pass are the pipeline's
    (scripts/bench_infer.py, tests/test_decode.py)."""
    ents = []
    for w, lg in zip(windows, logits):
        k = len(w.input_ids) - 2
        probs = softmax(lg[1:1 + k])
        group: list[tuple[int, str, str, float]] = []  # (token, bio, label, score)
        for j in range(k):
            tag = id2tag[int(probs[j].argmax())]
            bio, lab = tag.split("-", 1) if "-" in tag else ("I", tag)
            if group and lab == group[-1][2] and bio != "B":
                group.append((w.first + j, bio, lab, float(probs[j].max())))
                continue
            if group:
                ents.append(group)
            group = [(w.first + j, bio, lab, float(probs[j].max()))]
        if group:
            ents.append(group)
    spans = [{"start": encoded.offsets[g[0][0]][0], "end": encoded.offsets[g[-1][0]][1], "label": g[0][2],
              "score": float(np.mean([t[3] for t in g]))} for g in ents if g[0][2] != "O"]
    spans.sort(key=lambda x: x["start"])
    out = []
    for sp in spans:
        prev = out[-1] if out else None
        if prev is not None and prev["start"] <= sp["start"] < prev["end"]:
            a, b = sp["end"] - sp["start"], prev["end"] - prev["start"]
            if a > b or (a == b and sp["score"] > prev["score"]):
                out[-1] = sp
        else:
            out.append(sp)
    text = encoded.norm.text
    return [(*strip_span(text, sp["start"], sp["end"]), sp["label"]) for sp in out]


def predict_logits(model, windows: list[Window], batch_size: int, pad_id: int, device) -> list[np.ndarray]:
    """Run `model` over windows in batches (sorted by length to limit padding); logits per window. The
    logits stay on the device until every batch is queued, then come back; on a GPU, building the next
    batch on the CPU overlaps the current forward pass (each batch's input copy still waits for the one
    before: pageable memory)."""
    import torch

    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    out: list[np.ndarray | None] = [None] * len(windows)
    queued = []
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(windows[i].input_ids) for i in idx)
            ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                w = windows[i].input_ids
                ids[r, :len(w)] = w
                mask[r, :len(w)] = 1
            logits = model(input_ids=torch.from_numpy(ids).to(device),
                           attention_mask=torch.from_numpy(mask).to(device)).logits
            queued.append((idx, logits))
        for idx, logits in queued:
            lg = logits.float().cpu().numpy()
            for r, i in enumerate(idx):
                out[i] = lg[r, :len(windows[i].input_ids)]
    return out  # type: ignore[return-value]


def prepare_document(tokenizer, text: str, max_length: int, stride: int, doc_index: int = 0
                     ) -> tuple[Encoded, list[Window]]:
    """Normalize and tokenize a document and cut the windows prediction reads (sentence-aligned:
    `sentence_window_bounds`; sentences without a numeral are not read: `figure_token_ranges`)."""
    enc = encode(tokenizer, text)
    return enc, make_windows(tokenizer, enc, max_length, stride, doc_index=doc_index, sentences=True,
                             ranges=figure_token_ranges(enc))


def o_tag_index(id2label: dict) -> int:
    """Index of the O tag in a model's labels (error if it has none)."""
    o_index = next((int(i) for i, tag in id2label.items() if tag == "O"), None)
    if o_index is None:
        raise ValueError(f"the model's labels have no O tag: {sorted(id2label.values())}")
    return o_index


def predict_documents(model, tokenizer, texts: list[str], max_length: int, stride: int, batch_size: int = 16,
                      device=None) -> list[tuple[Encoded, np.ndarray]]:
    """Tokenize, window (`prepare_document`), predict and merge for many documents at once (windows of all
    documents are batched together). Returns each document's encoding and its merged per-token logits."""
    device = device or next(model.parameters()).device
    encs, windows = [], []
    for d, text in enumerate(texts):
        enc, ws = prepare_document(tokenizer, text, max_length, stride, doc_index=d)
        encs.append(enc)
        windows.extend(ws)
    logits = predict_logits(model, windows, batch_size, tokenizer.pad_token_id, device) if windows else []
    per_doc: list[list[int]] = [[] for _ in encs]
    for i, w in enumerate(windows):
        per_doc[w.doc_index].append(i)
    n_tags, o_index = model.config.num_labels, o_tag_index(model.config.id2label)
    return [(enc, merge_window_logits(len(enc.ids), [windows[i] for i in per_doc[d]],
                                      [logits[i] for i in per_doc[d]], n_tags, o_index))
            for d, enc in enumerate(encs)]
