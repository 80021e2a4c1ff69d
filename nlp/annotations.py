"""Stage 2: the annotation store (Label Studio JSON export format), gold facts, and their validator.

A store file is a JSON list of Label Studio tasks:
``{"id", "data": {"text", "doc"}, "annotations": [{"id", "result": [{"id", "type": "labels",
"from_name": "label", "to_name": "text", "value": {"start", "end", "text", "labels": [LABEL]}}]}]}``.
Offsets are Python string indices into ``data.text``, end exclusive. The same file imports into Label Studio
and comes back out of it unchanged.

Gold facts (``annotations/facts/<doc stem>.json``) are ``{"doc", "reporting_period", "facts": [...]}`` with
one fact per VALUE span of the document; see annotations/GUIDELINES.md.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LABELS = ("ENTITY", "METRIC", "VALUE", "PERIOD")
MEASURES = ("level", "yoy", "qoq", "share", "change")
QUALIFIERS = (None, ">", ">=", "~", "<", "<=")
DIRECTIONS = (None, "up", "down")
MODALITIES = ("actual", "forecast", "estimate")
PERIOD_RE = re.compile(r"^(\d{4}(Q[1-4]|H[12]|-(0[1-9]|1[0-2])|Q[1-4]-Q[1-4])?|\d{4}-\d{4})$")
FACT_FIELDS = ("value_span", "value_text", "entity", "metric", "period", "period_text", "measure", "value",
               "unit", "qualifier", "direction", "modality")


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    label: str
    text: str
    rid: str | None = field(default=None, compare=False, repr=False)  # Label Studio result id, kept on save

    def to_result(self, rid: str) -> dict:
        return {"id": rid, "type": "labels", "from_name": "label", "to_name": "text",
                "value": {"start": self.start, "end": self.end, "text": self.text, "labels": [self.label]}}


@dataclass
class Document:
    doc: str
    text: str
    spans: list[Span] = field(default_factory=list)
    task_id: int | None = None

    def to_task(self, task_id: int) -> dict:
        prefix = self.doc.split("_")[0]
        taken = {s.rid for s in self.spans if s.rid}
        result, n = [], 0
        for s in sorted(self.spans):
            rid = s.rid
            while rid is None or (rid in taken and rid != s.rid):
                rid, n = f"{prefix}-{n:04d}", n + 1
            taken.add(rid)
            result.append(s.to_result(rid))
        return {"id": task_id, "data": {"text": self.text, "doc": self.doc},
                "annotations": [{"id": task_id, "result": result}]}


class AnnotationError(ValueError):
    """A broken annotation file: the message names the file, the task and the span."""


# --------------------------------------------------------------------------------------------- I/O

def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename: a reader never sees
    a half-written file and a failed write leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file should read like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e
    if not raw.strip():
        raise AnnotationError(f"{path}: empty file")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from e


def save_documents(path: str | Path, docs: list[Document]) -> None:
    atomic_write_json(path, [d.to_task(d.task_id if d.task_id is not None else i + 1) for i, d in enumerate(docs)])


def load_documents(path: str | Path, seeds_dir: str | Path | None = None) -> list[Document]:
    """Load and validate a store file; raises AnnotationError on the first problem."""
    docs, errors = _parse_store(Path(path), Path(seeds_dir) if seeds_dir else None)
    if errors:
        raise AnnotationError(errors[0])
    return docs


def load_corpus(paths: list[str | Path] | str | Path) -> list[Document]:
    """All documents of the given store files or folders (``*.json`` directly inside a folder)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    docs: list[Document] = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        if not files:
            raise AnnotationError(f"{p}: no annotation files (*.json) there")
        for f in files:
            docs.extend(load_documents(f))
    return docs


# --------------------------------------------------------------------------------------------- inline markup

_INLINE = re.compile(r"\{\{|\}\}")


def parse_inline(marked: str, doc: str, where: str | None = None) -> Document:
    """A document written with inline spans, ``{{LABEL|mention}}`` (``{{VALUE|311亿元}}``), as a Document:
    the plain text (the markup removed) and one span per mark. A quick way to write annotated text by hand.
    Raises AnnotationError naming `where` (default `doc`), the line and the column of the first problem:
    an unclosed or nested mark, an unknown label, an empty mention, whitespace at a mention's edges."""
    where = where or doc
    out: list[str] = []
    spans: list[Span] = []
    n, pos, open_at = 0, 0, None  # n: characters of plain text so far

    def fail(i: int, msg: str):
        line = marked.count("\n", 0, i) + 1
        col = i - (marked.rfind("\n", 0, i) + 1) + 1
        raise AnnotationError(f"{where}: line {line}, column {col}: {msg}")

    for m in _INLINE.finditer(marked):
        chunk = marked[pos:m.start()]
        if m.group() == "{{":
            if open_at is not None:
                fail(m.start(), "'{{' inside a mark (marks do not nest)")
            out.append(chunk)
            n += len(chunk)
            open_at = m.start()
        else:
            if open_at is None:
                fail(m.start(), "'}}' without an opening '{{'")
            label, bar, mention = chunk.partition("|")
            if not bar or label not in LABELS:
                fail(open_at, f"mark {marked[open_at:m.end()]!r}: write {{{{LABEL|mention}}}} with LABEL one of "
                              f"{', '.join(LABELS)}")
            if not mention or mention != mention.strip():
                fail(open_at, f"mark {marked[open_at:m.end()]!r}: the mention is empty or starts or ends with "
                              f"whitespace")
            spans.append(Span(n, n + len(mention), label, mention))
            out.append(mention)
            n += len(mention)
            open_at = None
        pos = m.end()
    if open_at is not None:
        fail(open_at, "'{{' is never closed")
    out.append(marked[pos:])
    return Document(doc=doc, text="".join(out), spans=spans)


# --------------------------------------------------------------------------------------------- validation

def _parse_store(path: Path, seeds_dir: Path | None) -> tuple[list[Document], list[str]]:
    errors: list[str] = []
    try:
        tasks = read_json(path)
    except AnnotationError as e:
        return [], [str(e)]
    if not isinstance(tasks, list):
        return [], [f"{path}: expected a JSON list of Label Studio tasks, got {type(tasks).__name__}"]
    docs = []
    for ti, task in enumerate(tasks):
        where = f"{path}: task {ti}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            errors.append(f"{where}: missing 'data' object")
            continue
        text, doc = task["data"].get("text"), task["data"].get("doc")
        if not isinstance(text, str):
            errors.append(f"{where}: data.text must be a string")
            continue
        if not isinstance(doc, str) or not doc:
            errors.append(f"{where}: data.doc must be the seed file name")
            continue
        where = f"{path}: task {ti} ({doc})"
        if seeds_dir is not None and (seeds_dir / doc).is_file():
            from .reader import read_text  # the original text as the reader gives it

            if read_text(seeds_dir / doc) != text:
                errors.append(f"{where}: data.text differs from {seeds_dir / doc}")
        anns = task.get("annotations")
        if not isinstance(anns, list) or not anns or not isinstance(anns[0], dict) \
                or not isinstance(anns[0].get("result"), list):
            errors.append(f"{where}: annotations[0].result must be a list")
            continue
        spans = []
        for ri, item in enumerate(anns[0]["result"]):
            span, err = _parse_result(item, text)
            if err:
                errors.append(f"{where}, span {ri}: {err}")
            else:
                spans.append(span)
        spans.sort()
        errors.extend(f"{where}: {e}" for e in overlap_errors(spans))
        docs.append(Document(doc=doc, text=text, spans=spans, task_id=task.get("id")))
    return docs, errors


def overlap_errors(spans: list[Span]) -> list[str]:
    """One message per pair of neighbouring spans (in start order) that overlap."""
    spans = sorted(spans)
    return [f"spans overlap: [{a.start}, {a.end}) {a.label} {a.text!r} and [{b.start}, {b.end}) {b.label} {b.text!r}"
            for a, b in zip(spans, spans[1:]) if b.start < a.end]


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without the whitespace at its edges (an editor's selection, a "▁" token's space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# The VALUE boundary rules of SCHEMA.md as one pattern: approximation words that touch the number, a sign and
# a currency word before or after it, scale words, a unit, a trailing approximation word; noise spaces
# allowed between the parts (transcripts, PDFs). Simplified and Traditional, half- and full-width.
_SP = r"[ \t\u00a0\u3000*]*"
_V_APPROX_PRE = r"(?:未超过|未超過|不超过|不超過|超过|超過|超出|接近|将近|將近|大约|大約|不到|超|近|约|約|逾)"
_V_CURRENCY = r"(?:人" + _SP + r"民" + _SP + r"[币幣]|美元|港元|港" + _SP + r"[币幣])"
_V_NUMBER = (r"(?:[0-9０-９]+(?:[.,，．][0-9０-９]+)*|[〇零一二两兩三四五六七八九十百千万萬亿億半]+)")
_V_UNIT = (r"(?:个百分点|個百分點|百分点|百分點|[%％‰]|[元圆圓]|倍|成|个月|個月|分钟|分鐘|小时|小時|秒|人次|"
           r"人(?![ \t\u00a0\u3000]*民)|[个個位张張次户戶家款部集对對台件单單笔筆条條场場名]|[KkWw](?![A-Za-z]))")
_VALUE_RE = re.compile(
    rf"(?:{_V_APPROX_PRE}{_SP})?(?:[+\-−＋－]{_SP})?(?:{_V_CURRENCY}{_SP})?"
    rf"(?:(?:接近|超)?(?:翻倍|翻番)|{_V_NUMBER}(?:{_SP}[-~～至到]{_SP}{_V_NUMBER})?"
    rf"(?:{_SP}(?:[余餘多]{_SP})?[十百千万萬亿億兆])*(?:{_SP}[余餘多])?(?:{_SP}{_V_UNIT})?"
    rf"(?:{_SP}(?:亿元|億元|元)?{_SP}{_V_CURRENCY}|{_SP}[元圆圓])?(?:{_SP}(?:以上|左右|以下|之多|有余))?)")
_HAS_NUMERAL = re.compile(r"[0-9０-９〇零一二两兩三四五六七八九十百千万萬亿億半]|翻倍|翻番")


def value_extent(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Snap a predicted VALUE span to the schema's VALUE boundaries: the value expression (see `_VALUE_RE`)
    that contains the span's first numeral. A span with no numeral at all (a stray 超, 左右, 至) gives None;
    a span whose numeral no expression covers is returned unchanged. Gold VALUE spans are fixed points (the
    suite checks all of them)."""
    m = _HAS_NUMERAL.search(text, start, end)
    if m is None:
        return None
    first = m.start()
    lo = max(0, start - 12)
    for v in _VALUE_RE.finditer(text, lo, min(len(text), end + 12)):
        if v.start() <= first < v.end():
            return v.start(), v.end()
        if v.start() > first:
            break
    return start, end


def _parse_result(item, text: str) -> tuple[Span | None, str | None]:
    if not isinstance(item, dict):
        return None, "result item is not an object"
    if item.get("type") != "labels" or item.get("from_name") != "label" or item.get("to_name") != "text":
        return None, "type/from_name/to_name must be 'labels'/'label'/'text'"
    v = item.get("value")
    if not isinstance(v, dict):
        return None, "missing 'value'"
    start, end, stext, labels = v.get("start"), v.get("end"), v.get("text"), v.get("labels")
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
        return None, f"start/end must be integers, got {start!r}/{end!r}"
    if not 0 <= start < end <= len(text):
        return None, f"offsets [{start}, {end}) outside the text (length {len(text)})"
    if not isinstance(labels, list) or len(labels) != 1 or labels[0] not in LABELS:
        return None, f"[{start}, {end}) labels {labels!r}: must be one of {', '.join(LABELS)}"
    if stext != text[start:end]:
        return None, f"[{start}, {end}) text {stext!r} does not match data.text[{start}:{end}] = {text[start:end]!r}"
    if stext != stext.strip():
        return None, f"[{start}, {end}) {stext!r} starts or ends with whitespace"
    rid = item.get("id")
    return Span(start, end, labels[0], stext, str(rid) if rid is not None else None), None


def validate_facts(path: Path, docs_by_name: dict[str, Document]) -> list[str]:
    errors: list[str] = []
    try:
        obj = read_json(path)
    except AnnotationError as e:
        return [str(e)]
    if not isinstance(obj, dict) or not isinstance(obj.get("facts"), list):
        return [f"{path}: expected an object with a 'facts' list"]
    doc = docs_by_name.get(obj.get("doc"))
    if doc is None:
        return [f"{path}: doc {obj.get('doc')!r} has no gold annotation"]
    rp = obj.get("reporting_period")
    if rp is not None and not PERIOD_RE.match(str(rp)):
        errors.append(f"{path}: reporting_period {rp!r} is not an allowed period form")
    values = {(s.start, s.end): s for s in doc.spans if s.label == "VALUE"}
    seen: Counter = Counter()
    for fi, fact in enumerate(obj["facts"]):
        where = f"{path}: fact {fi}"
        if not isinstance(fact, dict):
            errors.append(f"{where}: not an object")
            continue
        missing = [k for k in FACT_FIELDS if k not in fact]
        if missing:
            errors.append(f"{where}: missing field(s) {', '.join(missing)}")
            continue
        vs = fact["value_span"]
        if not (isinstance(vs, list) and len(vs) == 2 and all(isinstance(x, int) for x in vs)):
            errors.append(f"{where}: value_span must be [start, end]")
            continue
        where += f" {fact['value_text']!r} at {vs}"
        span = values.get(tuple(vs))
        if span is None:
            errors.append(f"{where}: value_span is not a VALUE span of {doc.doc}")
        elif span.text != fact["value_text"]:
            errors.append(f"{where}: value_text does not match the VALUE span text {span.text!r}")
        seen[tuple(vs)] += 1
        if fact["period"] is not None and not PERIOD_RE.match(str(fact["period"])):
            errors.append(f"{where}: period {fact['period']!r} is not an allowed form (2024Q3, 2024H1, 2024, "
                          f"2024-09, 2024Q1-Q3, 2019-2024 or null)")
        for name, allowed in (("measure", MEASURES), ("qualifier", QUALIFIERS), ("direction", DIRECTIONS),
                              ("modality", MODALITIES)):
            if fact[name] not in allowed:
                errors.append(f"{where}: {name} {fact[name]!r} is not one of {allowed}")
        if not isinstance(fact["value"], (int, float)) or isinstance(fact["value"], bool):
            errors.append(f"{where}: value must be a number, got {fact['value']!r}")
        if not isinstance(fact["unit"], str) or not fact["unit"]:
            errors.append(f"{where}: unit must be a non-empty string")
    for key, n in seen.items():
        if n > 1:
            errors.append(f"{path}: {n} facts for the VALUE span {list(key)}")
    for key, span in values.items():
        if key not in seen:
            errors.append(f"{path}: VALUE span {list(key)} {span.text!r} has no fact")
    return errors


@dataclass
class ValidationReport:
    documents: list[Document]
    errors: list[str]
    facts: dict[str, int]
    synthetic: list[Document] = field(default_factory=list)
    """Documents of stores under a `synthetic/` folder: training-only extras, not gold (no facts)."""

    def table(self) -> str:
        lines = [f"{'document':<34}" + "".join(f"{lab:>8}" for lab in LABELS) + f"{'facts':>8}"]
        for title, docs in (("", self.documents), ("synthetic (training only)", self.synthetic)):
            if title and not docs:
                continue
            if title:
                lines.append(title)
            totals: Counter = Counter()
            for d in docs:
                c = Counter(s.label for s in d.spans)
                totals.update(c)
                lines.append(f"{d.doc:<34}" + "".join(f"{c[lab]:>8}" for lab in LABELS)
                             + f"{self.facts.get(d.doc, 0):>8}")
            lines.append(f"{'total':<34}" + "".join(f"{totals[lab]:>8}" for lab in LABELS)
                         + f"{sum(self.facts.get(d.doc, 0) for d in docs):>8}")
        return "\n".join(lines)


def validate_tree(root: str | Path = "annotations", seeds_dir: str | Path | None = "seeds") -> ValidationReport:
    """Validate every JSON file under `root`: span stores anywhere, fact files under `facts/`."""
    root = Path(root)
    seeds = Path(seeds_dir) if seeds_dir and Path(seeds_dir).is_dir() else None
    files = sorted(root.rglob("*.json"))
    errors: list[str] = []
    if not files:
        errors.append(f"{root}: no annotation files found")
    gold: dict[str, Document] = {}
    documents: list[Document] = []
    synthetic: list[Document] = []
    fact_files = []
    for f in files:
        if "facts" in f.relative_to(root).parts[:-1]:
            fact_files.append(f)
            continue
        docs, errs = _parse_store(f, seeds)
        errors.extend(errs)
        if "synthetic" in f.relative_to(root).parts:
            errors.extend(_inline_source_errors(f, docs))
            synthetic.extend(docs)
        elif "passes" not in f.relative_to(root).parts:
            for d in docs:
                if d.doc in gold:
                    errors.append(f"{f}: document {d.doc} is annotated twice in the gold store")
                gold[d.doc] = d
                documents.append(d)
    facts: dict[str, int] = {}
    for f in fact_files:
        errs = validate_facts(f, gold)
        errors.extend(errs)
        try:
            obj = read_json(f)
            facts[obj["doc"]] = len(obj["facts"])
        except (AnnotationError, KeyError, TypeError):
            pass
    return ValidationReport(documents=documents, errors=errors, facts=facts, synthetic=synthetic)


def _inline_source_errors(store: Path, docs: list[Document]) -> list[str]:
    """A store made by `nlp annotations from-inline` must still equal its source `src/<stem>.txt` beside it."""
    src = store.parent / "src" / f"{store.stem}.txt"
    if not src.is_file():
        return []
    from .reader import read_text

    try:
        want = parse_inline(read_text(src), f"{store.stem}.txt", where=str(src))
    except ValueError as e:  # AnnotationError, or the reader's ReadError
        return [str(e)]
    got = docs[0] if len(docs) == 1 else None
    if got is None or got.text != want.text or [(s.start, s.end, s.label) for s in got.spans] != \
            [(s.start, s.end, s.label) for s in want.spans]:
        return [f"{store}: differs from its source {src} (run `nlp annotations from-inline {src} --out "
                f"{store.parent}`)"]
    return []


# --------------------------------------------------------------------------------------------- agreement

def span_agreement(a: list[Document], b: list[Document]) -> dict[str, dict[str, float]]:
    """Exact-match span agreement between two annotation passes over the same documents: per label
    precision/recall/F1 of b against a (F1 is symmetric), plus micro."""
    by_doc = {d.doc: d for d in b}
    tp: Counter = Counter()
    na: Counter = Counter()
    nb: Counter = Counter()
    for da in a:
        db = by_doc.get(da.doc)
        if db is None:
            raise AnnotationError(f"document {da.doc} is in the first pass only")
        sa = {(s.start, s.end, s.label) for s in da.spans}
        sb = {(s.start, s.end, s.label) for s in db.spans}
        for lab in LABELS:
            xa = {s for s in sa if s[2] == lab}
            xb = {s for s in sb if s[2] == lab}
            tp[lab] += len(xa & xb)
            na[lab] += len(xa)
            nb[lab] += len(xb)
    out = {}
    for lab in (*LABELS, "micro"):
        t = sum(tp.values()) if lab == "micro" else tp[lab]
        x = sum(na.values()) if lab == "micro" else na[lab]
        y = sum(nb.values()) if lab == "micro" else nb[lab]
        p = t / y if y else 0.0
        r = t / x if x else 0.0
        out[lab] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                    "first": x, "second": y, "both": t}
    return out
