"""The annotation loop with a Label Studio server: push documents (and model predictions), pull annotations.

``nlp ls`` talks to a running Label Studio (tested against 1.23 Community) through ``label-studio-sdk`` 2.x.

``nlp ls config``
    prints the labeling config generated from :data:`SCHEMA` (ENTITY, METRIC, VALUE, PERIOD with colours and
    hotkeys e/m/v/p): ``<Labels name="label" toName="text">`` on ``<Text name="text" value="$text"/>``, with
    ``<Header value="$doc"/>`` above it, validated with the SDK's ``LabelInterface``.

``nlp ls push PATH... --project TITLE [--model DIR] [--annotations | --no-annotations]``
    creates the project (or reuses the one with exactly that title, after checking that its labels are the
    schema's) and imports documents as tasks ``{"data": {"text", "doc"}}``. PATH is a text file (read with
    :func:`nlp.reader.read_text`; ``doc`` = file name), an annotation store file (``*.json``, see
    :mod:`nlp.annotations`) or a folder of them. A document already in the project (same ``data.doc``) is not
    imported again.

    Annotations: the spans of a store file are pushed as an annotation with ``--annotations``, and by default
    for store files in a folder named ``gold`` (``annotations/gold``); ``--no-annotations`` pushes the text
    only. They are imported with ``ground_truth: false`` (Label Studio's import default is true) so that an
    annotator's later correction wins the pull rule below.

    Predictions (``--model DIR``, a saved token-classification model such as a run directory of ``nlp
    train``): the spans of :func:`nlp.align.predict_documents` + :func:`nlp.align.decode` at original offsets,
    each with its score; ``model_version`` = the model directory's name. The task's score is the mean span
    score (a span's score is the mean probability of its tokens' tags); a document without any predicted span
    gets the mean probability of the predicted tag over the tokens the model read (sentences with a numeral;
    1.0 when there are none: nothing to annotate). Uncertainty sampling: new tasks are
    imported in ascending score order (least confident first, ties by name), so task ids, the Data Manager's
    default order and "Sequential sampling" put the least confident documents first; the project is also
    switched to Label Studio's own "Uncertainty sampling" with its ``model_version`` set to this model, which
    serves the unlabeled task with the lowest prediction score next, including documents imported earlier
    (they get this model's prediction if they have none from it yet).

``nlp ls pull --project TITLE --out FILE [--force]``
    exports the project (JSON, all tasks) and writes the annotation store format with
    :func:`nlp.annotations.save_documents` into a temporary file that :func:`nlp.annotations.load_documents`
    checks before it replaces FILE (atomic). Tasks are written in task id order, each with its Label Studio
    task id; the same project pulled twice gives the same file; an existing FILE is only replaced with
    ``--force``. Tasks without an annotation, or whose annotations are all cancelled (skipped), are reported
    and left out. Several annotations on one task: cancelled ones are ignored; ground-truth ones (the star in
    Label Studio) come first; of those left, the latest by ``updated_at`` (then ``created_at``, then id) is
    taken. Drafts (work not submitted) are not annotations. Result items of controls other than ``label`` (a
    project may add some) are ignored. Leading or trailing whitespace in a span (an editor selection) is
    trimmed, as the guideline says, and reported; a task whose spans still break the store's rules (overlap,
    unknown label) is reported and left out, and the exit code is 1.

``nlp ls bio (--project TITLE | --from STORE...) --out FILE``
    writes character-level BIO (IOB2): one character per line, ``CHAR TAG`` (``快 B-ENTITY``), a blank line
    after each document; whitespace characters are left out (a space inside a span is dropped and the span
    goes on with ``I-``). Label Studio's own ``CONLL2003`` export is of no use for Chinese: it splits
    ``data.text`` on whitespace, so a whole unspaced Chinese clause is one token tagged with the label of the
    first span in it (Label Studio 1.23 exports ``快手二季度净利润增超七成 -X- _ B-ENTITY`` for a title whose
    only ENTITY is ``快手``).

Connection: ``--url`` / ``--api-key``, else ``LABEL_STUDIO_URL`` (default http://localhost:8080) /
``LABEL_STUDIO_API_KEY`` (a legacy token or a personal access token). A server that cannot be reached, a
rejected key, a project whose labels differ from the schema or a payload that fails validation end with ONE
line ``error: ...`` on stderr and exit code 2. Everything sent is validated client side first, since the
server accepts results whose text does not match the offsets, unknown labels and overlaps: the store's own
rules (:func:`nlp.annotations._parse_result`, no overlaps) and the SDK's ``LabelInterface`` against the
project's config.

Limits: Label Studio Enterprise imports asynchronously and returns no task ids, which ``push`` reports as an
error after the import. Offsets are Python string indices (code points), as in the store. The seeds have no
character outside the Basic Multilingual Plane; with emoji or other astral characters, check in the editor
that spans land where expected (older Label Studio editors counted UTF-16 units).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .annotations import (LABELS, AnnotationError, Document, Span, _parse_result, atomic_write_text, load_corpus,
                          load_documents, overlap_errors, save_documents, strip_span)
from .config import check_model_dir
from .reader import SUPPORTED_SUFFIXES, ReadError, read_document

DEFAULT_URL = "http://localhost:8080"
FROM_NAME = "label"
TO_NAME = "text"
UNCERTAINTY_SAMPLING = "Uncertainty sampling"


@dataclass(frozen=True)
class LabelSpec:
    name: str
    background: str
    hotkey: str


# The schema as Label Studio shows it. Hotkeys are lower-case letters that the text editor does not use
# (it binds u, ctrl+..., alt+...; the upper-case tool keys are for images).
SCHEMA: tuple[LabelSpec, ...] = (
    LabelSpec("ENTITY", "#1f77b4", "e"),
    LabelSpec("METRIC", "#2ca02c", "m"),
    LabelSpec("VALUE", "#d62728", "v"),
    LabelSpec("PERIOD", "#ff7f0e", "p"),
)
assert tuple(s.name for s in SCHEMA) == LABELS


class LabelStudioError(Exception):
    """A problem reported as one line (exit code 2): server down, key rejected, schema mismatch, bad payload."""


# --------------------------------------------------------------------------------------------- config

def label_config() -> str:
    """The labeling config generated from :data:`SCHEMA`, validated with the SDK's LabelInterface."""
    from xml.sax.saxutils import quoteattr  # here, not at import: every `nlp` command imports this module

    labels = "\n".join(f"    <Label value={quoteattr(s.name)} background={quoteattr(s.background)} "
                       f"hotkey={quoteattr(s.hotkey)}/>" for s in SCHEMA)
    config = (f'<View>\n  <Header value="$doc"/>\n'
              f'  <Labels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </Labels>\n'
              f'  <Text name="{TO_NAME}" value="$text" granularity="symbol"/>\n</View>\n')
    problem = schema_problem(config)
    if problem:  # a bug in this module, not a user error
        raise AssertionError(problem)
    return config


def label_interface(config: str):
    """The SDK's parsed config; LabelStudioError when the config is not valid."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        li = LabelInterface(config)
        li.validate()
    except Exception as e:  # lxml/jsonschema/SDK validation errors
        raise LabelStudioError(f"invalid labeling config: {_one_line(e)}") from e
    return li


def schema_problem(config: str) -> str | None:
    """None when `config` has the schema's Labels control on a Text object over $text, else what differs."""
    try:
        li = label_interface(config)
    except LabelStudioError as e:
        return str(e)
    try:
        control = li.get_control(FROM_NAME)
    except Exception:
        control = None
    if control is None or control.tag.lower() != "labels":
        return f'no <Labels name="{FROM_NAME}"> control'
    if list(control.to_name or []) != [TO_NAME]:
        return f'<Labels name="{FROM_NAME}"> points to {control.to_name}, not to "{TO_NAME}"'
    try:
        obj = li.get_object(TO_NAME)
    except Exception:
        obj = None
    if obj is None or obj.tag.lower() != "text" or obj.value != "$text":
        return f'no <Text name="{TO_NAME}" value="$text"> object'
    have = list(control.labels or [])
    if sorted(have) != sorted(LABELS) or len(have) != len(set(have)):
        return f"labels {', '.join(have) or '(none)'} differ from the schema's {', '.join(LABELS)}"
    return None


# --------------------------------------------------------------------------------------------- validation

def validate_results(result: list, text: str, li=None, *, prediction: dict | None = None) -> list[str]:
    """Problems of one annotation's (or prediction's) result list against `text`: the store's rules (offsets,
    span text, label, edge whitespace, overlaps) and, with `li`, the SDK's LabelInterface."""
    if not isinstance(result, list):
        return ["result must be a list"]
    errors, spans = [], []
    for i, item in enumerate(result):
        span, err = _parse_result(item, text)
        if err:
            errors.append(f"span {i}: {err}")
        else:
            spans.append(span)
    errors.extend(overlap_errors(spans)[:1])
    if li is not None and not errors:
        # The SDK checks a region's names, type, label and value shape (about 1 ms a region): one region of
        # each distinct shape stands for all; the offsets and texts were checked above, region by region.
        shapes: dict[tuple, dict] = {}
        for item in result:
            v = item["value"]
            key = (item.get("from_name"), item.get("to_name"), item.get("type"), tuple(v.get("labels") or ()),
                   tuple(sorted(v)), tuple(sorted(item)))
            shapes.setdefault(key, item)
        obj = dict(prediction or {}, result=list(shapes.values()))
        errors.extend(li.validate_prediction(obj, return_errors=True))
    return errors


def validate_task(task: dict, li) -> list[str]:
    """Problems of one import payload ``{"data", "annotations"?, "predictions"?}`` (client side)."""
    data = task.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"]:
        return ["data.text must be a non-empty string"]
    if not isinstance(data.get("doc"), str) or not data["doc"]:
        return ["data.doc must be the file name"]
    errors = []
    for kind in ("annotations", "predictions"):
        for j, obj in enumerate(task.get(kind) or []):
            extra = {k: obj[k] for k in ("score", "model_version") if k in obj} if kind == "predictions" else None
            for e in validate_results(obj.get("result"), data["text"], li, prediction=extra):
                errors.append(f"{kind}[{j}]: {e}")
    return errors


# --------------------------------------------------------------------------------------------- documents

@dataclass
class PushItem:
    doc: Document
    source: Path
    with_annotation: bool = False
    score: float | None = None
    prediction: list[dict] | None = None


def collect_documents(paths: list[str | Path], annotations: bool | None) -> tuple[list[PushItem], list[str]]:
    """Documents to push from files and folders, and notes on what was left out. `annotations`: True/False
    force, None = store files in a folder named ``gold`` carry their spans."""
    items: list[PushItem] = []
    notes: list[str] = []
    seen: dict[str, PushItem] = {}
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (*SUPPORTED_SUFFIXES, ".json"))
            if not files:
                raise LabelStudioError(f"{p}: no documents there (*{', *'.join(SUPPORTED_SUFFIXES)} or store *.json)")
        elif p.is_file():
            files = [p]
        else:
            raise LabelStudioError(f"{p}: no such file or folder")
        for f in files:
            if f.suffix.lower() == ".json":
                with_ann = annotations if annotations is not None else f.parent.name == "gold"
                found = [PushItem(d, f, with_ann) for d in load_documents(f)]
                if annotations is None and not with_ann and any(d.doc.spans for d in found):
                    notes.append(f"{f}: pushing the text only (--annotations pushes its spans too)")
            else:
                found = [PushItem(Document(doc=f.name, text=read_document(f)), f)]
                if annotations:
                    notes.append(f"{f}: a text file has no annotation to push")
            for it in found:
                if not it.doc.text.strip():
                    notes.append(f"{it.source}: {it.doc.doc} is empty: skipped")
                elif it.doc.doc in seen:
                    prev = seen[it.doc.doc]
                    if prev.doc.text != it.doc.text:
                        raise LabelStudioError(f"{it.doc.doc}: given twice with different texts "
                                               f"({prev.source}, {it.source})")
                    notes.append(f"{it.source}: {it.doc.doc} already given by {prev.source}: skipped")
                else:
                    seen[it.doc.doc] = it
                    items.append(it)
    return items, notes


def annotation_payload(doc: Document) -> dict:
    return {"result": [s.to_result(f"{i:04d}") for i, s in enumerate(sorted(doc.spans))], "ground_truth": False}


@dataclass
class Prediction:
    spans: list  # list[nlp.align.PredictedSpan]
    score: float

    def result(self) -> list[dict]:
        out = []
        for i, s in enumerate(self.spans):
            item = Span(s.start, s.end, s.label, s.text).to_result(f"p{i:04d}")
            item["score"] = round(float(s.score), 6)
            out.append(item)
        return out


def predict(model_dir: str | Path, texts: list[str], max_length: int | None = None, stride: int | None = None,
            batch_size: int = 16) -> list[Prediction]:
    """Spans (original offsets, with scores) of a saved token-classification model, and each text's score:
    the mean span score, or the mean predicted-tag probability over the tokens read when no span is
    predicted."""
    import numpy as np
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .align import decode, figure_token_ranges, predict_documents, read_lexicon, softmax
    from .config import run_settings

    model_dir = check_model_dir(model_dir)
    settings = run_settings(model_dir, max_length, stride)  # the window the model was trained with, unless given
    max_length, stride = settings["max_length"], settings["stride"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    id2tag = {int(k): v for k, v in model.config.id2label.items()}
    bad = sorted(set(v.split("-", 1)[-1] for v in id2tag.values() if v != "O") - set(LABELS))
    if bad:
        raise LabelStudioError(f"{model_dir}: the model predicts labels outside the schema: {', '.join(bad)}")
    lexicon = read_lexicon(model_dir)
    out = []
    for enc, logits in predict_documents(model, tok, texts, max_length, stride, batch_size):
        spans = decode(enc, logits, id2tag, lexicon)
        read = [t for a, b in figure_token_ranges(enc) for t in range(a, b)]  # the tokens the model saw
        if spans:
            score = float(np.mean([s.score for s in spans]))
        elif read:
            score = float(np.mean(softmax(logits[read]).max(-1)))
        else:  # no sentence that could hold a figure: nothing to annotate
            score = 1.0
        out.append(Prediction(spans, round(score, 6)))
    return out


# --------------------------------------------------------------------------------------------- server

def _one_line(e) -> str:
    return " ".join(str(e).split())[:400]


def _api_detail(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, str) and body.lstrip().startswith("<"):
        m = re.search(r"<title>(.*?)</title>", body, re.S | re.I)
        return f"an HTML page{': ' + _one_line(m.group(1)) if m else ''}"
    if isinstance(body, dict):
        for k in ("detail", "validation_errors", "message", "error"):
            if body.get(k):
                return _one_line(json.dumps(body[k], ensure_ascii=False) if not isinstance(body[k], str) else body[k])
        return _one_line(json.dumps(body, ensure_ascii=False))
    return _one_line(body if body is not None else e)


def explain(e: BaseException, url: str) -> str | None:
    """One line for an error of the SDK or of the HTTP layer, None when it is none of those."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(e, ApiError):
        code = e.status_code
        if code in (401, 403):
            return (f"Label Studio at {url} rejected the API key (HTTP {code}): check --api-key or "
                    f"LABEL_STUDIO_API_KEY (legacy tokens also need LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true "
                    f"on the server)")
        if code == 404:
            return f"{url} answered 404: is it a Label Studio server? ({_api_detail(e)})"
        if code is None:
            return f"Label Studio client: {_api_detail(e)}"
        return f"Label Studio at {url} answered HTTP {code}: {_api_detail(e)}"
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
        return (f"cannot reach Label Studio at {url} ({_one_line(e) or type(e).__name__}): is the server "
                f"running? (--url or LABEL_STUDIO_URL)")
    if isinstance(e, httpx.TimeoutException):
        return f"Label Studio at {url} did not answer in time ({type(e).__name__})"
    if isinstance(e, (httpx.HTTPError, httpx.InvalidURL)):
        return f"Label Studio at {url}: {type(e).__name__}: {_one_line(e)}"
    try:
        import pydantic
        if isinstance(e, (pydantic.ValidationError, json.JSONDecodeError)):
            return f"{url} gave an answer that is not Label Studio's: {_one_line(e)[:200]}"
    except ImportError:  # pragma: no cover
        pass
    return None


@dataclass
class Server:
    url: str
    api_key: str
    timeout: float = 120.0
    client: object = field(default=None, repr=False)

    @classmethod
    def connect(cls, url: str | None = None, api_key: str | None = None, timeout: float = 120.0) -> "Server":
        """Client for the server at `url` with `api_key` (defaults: the environment); the key is checked now."""
        from label_studio_sdk import LabelStudio

        url = (url or os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
        if not api_key:
            raise LabelStudioError("no API key: pass --api-key or set LABEL_STUDIO_API_KEY (Label Studio: "
                                   "Account & Settings > Personal Access Token)")
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"--url {url!r} must start with http:// or https://")
        server = cls(url, api_key, timeout)
        try:
            server.client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout, max_retries=1)
            server.client.users.whoami(request_options={"max_retries": 0})  # a server that is down: at once
        except Exception as e:
            msg = explain(e, url)
            if msg is None:
                raise
            raise LabelStudioError(msg) from e
        return server

    def call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelStudioError:
            raise
        except Exception as e:
            msg = explain(e, self.url)
            if msg is None:
                raise
            raise LabelStudioError(msg) from e

    # projects --------------------------------------------------------------------------------------
    def find_project(self, title: str):
        found = [p for p in self.call(lambda: list(self.client.projects.list(title=title))) if p.title == title]
        if len(found) > 1:
            raise LabelStudioError(f"{len(found)} projects are titled {title!r} on {self.url} (ids "
                                   f"{', '.join(str(p.id) for p in found)}): rename all but one")
        return self.get_project(found[0].id) if found else None

    def get_project(self, pid: int):
        return self.call(self.client.projects.get, pid)

    def check_schema(self, p) -> None:
        problem = schema_problem(p.label_config or "")
        if problem:
            raise LabelStudioError(f"project {p.title!r} (id {p.id}) does not use the schema's labeling config: "
                                   f"{problem} (see `nlp ls config`)")

    def project(self, title: str):
        """The project titled `title`, after checking that its labels are the schema's."""
        p = self.find_project(title)
        if p is None:
            raise LabelStudioError(f"no project titled {title!r} on {self.url}")
        self.check_schema(p)
        return p

    def create_project(self, title: str):
        made = self.call(self.client.projects.create, title=title, label_config=label_config(),
                         description="nlp: ENTITY / METRIC / VALUE / PERIOD spans (see annotations/GUIDELINES.md)")
        return self.get_project(made.id)

    def project_url(self, pid: int) -> str:
        return f"{self.url}/projects/{pid}/data"

    # tasks -----------------------------------------------------------------------------------------
    def export(self, pid: int) -> list[dict]:
        """Every task of the project with its annotations (JSON export, all tasks)."""
        def run():
            raw = b"".join(self.client.projects.exports.download_sync(pid, export_type="JSON",
                                                                      download_all_tasks=True))
            return json.loads(raw)
        tasks = self.call(run)
        if not isinstance(tasks, list):
            raise LabelStudioError(f"{self.url}: the export of project {pid} is not a list of tasks")
        return tasks

    def import_tasks(self, pid: int, tasks: list[dict]) -> list[int]:
        # no retry: an import that failed after the commit would come twice
        resp = self.call(self.client.projects.import_tasks, pid, request=tasks, return_task_ids=True,
                         request_options={"max_retries": 0})
        ids = list(getattr(resp, "task_ids", None) or [])
        if len(ids) != len(tasks):
            raise LabelStudioError(f"{self.url}: import of {len(tasks)} tasks into project {pid} returned "
                                   f"{len(ids)} task ids")
        return ids


# --------------------------------------------------------------------------------------------- push

@dataclass
class PushReport:
    project_id: int
    created: bool
    imported: list[tuple[str, int]]  # (doc, task id) in import order
    existing: list[tuple[str, int]]
    with_annotations: int = 0
    with_predictions: int = 0
    model_version: str | None = None
    notes: list[str] = field(default_factory=list)



def push(server: Server, paths: list[str | Path], title: str, model: str | Path | None = None,
         annotations: bool | None = None, max_length: int | None = None, stride: int | None = None,
         batch_size: int = 16, collected: tuple[list[PushItem], list[str]] | None = None) -> PushReport:
    """Import the documents of `paths` (or the `collected` ones) into the project `title`; see the module doc."""
    items, notes = collected if collected is not None else collect_documents(paths, annotations)
    notes = list(notes)
    if not items:
        raise LabelStudioError("nothing to push: " + ("; ".join(notes) if notes else "no documents"))
    if model is not None:
        check_model_dir(model)
    project = server.find_project(title)
    if project is not None:
        server.check_schema(project)
    created = project is None  # created only once everything is ready to go
    li = label_interface(label_config() if created else project.label_config)
    on_server: dict[str, int] = {}
    texts: dict[str, str] = {}
    if not created:
        for t in sorted(server.export(project.id), key=lambda t: t.get("id", 0)):
            data = t.get("data") or {}
            if isinstance(data.get("doc"), str) and data["doc"] not in on_server:
                on_server[data["doc"]] = t["id"]
                texts[data["doc"]] = data.get("text")
    new = [it for it in items if it.doc.doc not in on_server]
    old = []
    for it in items:
        if it.doc.doc not in on_server:
            continue
        tid = on_server[it.doc.doc]
        if texts[it.doc.doc] != it.doc.text:
            notes.append(f"{it.source}: {it.doc.doc}: task {tid} of the project has this name with another "
                         f"text: not imported (rename the file to import it as a new document)")
        else:
            old.append(it)
            notes.append(f"{it.doc.doc}: already in the project (task {tid}): not imported again")

    mv = None
    if model is not None:
        mv = Path(model).resolve().name
        preds = predict(model, [it.doc.text for it in new + old], max_length, stride, batch_size)
        for it, pr in zip(new + old, preds):
            it.prediction, it.score = pr.result(), pr.score
        new.sort(key=lambda it: (it.score, it.doc.doc))  # uncertainty sampling: least confident first

    payload = []
    for it in new:
        task: dict = {"data": {"text": it.doc.text, "doc": it.doc.doc}}
        if it.with_annotation:
            task["annotations"] = [annotation_payload(it.doc)]
        if it.prediction is not None:
            task["predictions"] = [{"result": it.prediction, "score": it.score, "model_version": mv}]
        payload.append(task)
    extra_preds = []
    if mv is not None and old:  # documents imported earlier get this model's prediction if they have none
        have = {(p.task, p.model_version) for p in server.call(server.client.predictions.list, project=project.id)}
        for it in old:
            tid = on_server[it.doc.doc]
            if (tid, mv) not in have:
                extra_preds.append((it, tid))
    # validate everything before the first byte goes out
    problems = []
    for task in payload:
        problems.extend(f"{task['data'].get('doc')}: {e}" for e in validate_task(task, li))
    for it, tid in extra_preds:
        problems.extend(f"{it.doc.doc}: prediction: {e}" for e in
                        validate_results(it.prediction, it.doc.text, li, prediction={"score": it.score}))
    if problems:
        raise LabelStudioError(f"refusing to send {len(problems)} invalid item(s); first: {problems[0]}")

    if created:
        project = server.create_project(title)
    ids = server.import_tasks(project.id, payload) if payload else []
    for it, tid in extra_preds:
        server.call(server.client.predictions.create, task=tid, result=it.prediction, score=it.score,
                    model_version=mv)
    if mv is not None:
        server.call(server.client.projects.update, project.id, model_version=mv, sampling=UNCERTAINTY_SAMPLING,
                    show_collab_predictions=True)
    return PushReport(project_id=project.id, created=created,
                      imported=[(it.doc.doc, tid) for it, tid in zip(new, ids)],
                      existing=[(it.doc.doc, on_server[it.doc.doc]) for it in old],
                      with_annotations=sum(1 for t in payload if "annotations" in t),
                      with_predictions=len(payload) + len(extra_preds) if mv else 0,
                      model_version=mv, notes=notes)


# --------------------------------------------------------------------------------------------- pull

_EPOCH = datetime.fromisoformat("0001-01-01T00:00:00+00:00")


def _when(a: dict, key: str) -> datetime:
    v = a.get(key)
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
            return d if d.tzinfo else d.replace(tzinfo=_EPOCH.tzinfo)
        except ValueError:
            pass
    return _EPOCH


def choose_annotation(annotations: list[dict]) -> tuple[dict | None, str]:
    """The annotation a task's document is taken from, and why (or why none).

    Cancelled (skipped) annotations are ignored; ground-truth annotations are preferred; among the remaining
    ones the latest by ``updated_at``, then ``created_at``, then id."""
    anns = [a for a in annotations or [] if isinstance(a, dict)]
    if not anns:
        return None, "no annotation"
    usable = [a for a in anns if not a.get("was_cancelled")]
    if not usable:
        return None, f"{'the only annotation is' if len(anns) == 1 else f'all {len(anns)} annotations are'} cancelled"
    gt = [a for a in usable if a.get("ground_truth")]
    pool = gt or usable
    best = max(pool, key=lambda a: (_when(a, "updated_at") if a.get("updated_at") else _when(a, "created_at"),
                                    _when(a, "created_at"), a.get("id") or 0))
    if len(usable) == 1:
        why = "the only annotation" if len(anns) == 1 else "the only one not cancelled"
    else:
        why = (f"ground truth, latest of {len(gt)}" if len(gt) > 1 else "ground truth") if gt else \
            f"latest of {len(usable)}"
    return best, why


@dataclass
class PullReport:
    documents: list[Document]
    skipped: list[str] = field(default_factory=list)  # no / cancelled annotation, duplicates
    invalid: list[str] = field(default_factory=list)  # annotations that break the store's rules
    notes: list[str] = field(default_factory=list)  # choices among several annotations, trimmed spans


def _trim(item: dict, text: str) -> tuple[dict, str | None]:
    """A result item with whitespace at the edges of its span trimmed (and a note), else unchanged."""
    v = item.get("value") if isinstance(item, dict) else None
    if not isinstance(v, dict) or not isinstance(v.get("start"), int) or not isinstance(v.get("end"), int):
        return item, None
    s, e = v["start"], v["end"]
    if not (0 <= s < e <= len(text)) or v.get("text") != text[s:e]:
        return item, None
    s, e = strip_span(text, s, e)
    if (s, e) == (v["start"], v["end"]) or s == e:
        return item, None
    note = f"[{v['start']}, {v['end']}) {v['text']!r} trimmed to [{s}, {e}) {text[s:e]!r}"
    return dict(item, value=dict(v, start=s, end=e, text=text[s:e])), note


def tasks_to_documents(tasks: list[dict]) -> PullReport:
    rep = PullReport(documents=[])
    by_doc: dict[str, int] = {}
    for t in sorted(tasks, key=lambda t: t.get("id") or 0):
        data = t.get("data") or {}
        doc, text = data.get("doc"), data.get("text")
        where = f"task {t.get('id')} ({doc})"
        if not isinstance(text, str) or not isinstance(doc, str) or not doc:
            rep.invalid.append(f"{where}: data must have the strings 'text' and 'doc' (the file name)")
            continue
        ann, why = choose_annotation(t.get("annotations"))
        if ann is None:
            rep.skipped.append(f"{where}: {why}")
            continue
        if len([a for a in t.get("annotations") or [] if isinstance(a, dict)]) > 1:
            rep.notes.append(f"{where}: annotation {ann.get('id')} used ({why})")
        result = ann.get("result")
        if not isinstance(result, list):
            rep.invalid.append(f"{where}: annotation {ann.get('id')}: result is not a list")
            continue
        fixed = []
        ours = [item for item in result if isinstance(item, dict) and item.get("from_name") == FROM_NAME]
        if len(ours) < len(result):
            rep.notes.append(f"{where}: {len(result) - len(ours)} result item(s) of other controls than "
                             f"'{FROM_NAME}' ignored")
        for item in ours:
            item, note = _trim(item, text)
            if note:
                rep.notes.append(f"{where}: {note}")
            fixed.append(item)
        errors = validate_results(fixed, text)
        if errors:
            rep.invalid.append(f"{where}: annotation {ann.get('id')}: {errors[0]}"
                               + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
            continue
        if doc in by_doc:
            rep.skipped.append(f"{where}: document already taken from task {by_doc[doc]}")
            continue
        by_doc[doc] = t.get("id")
        spans = sorted(_parse_result(item, text)[0] for item in fixed)
        rep.documents.append(Document(doc=doc, text=text, spans=spans, task_id=t.get("id")))
    return rep


def write_store(path: str | Path, docs: list[Document]) -> None:
    """save_documents into a temporary file next to `path`, load_documents on it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_documents(tmp, docs)
        back = load_documents(tmp)
        if [(d.doc, d.text, d.spans) for d in back] != [(d.doc, d.text, sorted(d.spans)) for d in docs]:
            raise AnnotationError(f"{path}: the written store does not read back identically")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def pull(server: Server, title: str, out: str | Path | None = None) -> PullReport:
    project = server.project(title)
    rep = tasks_to_documents(server.export(project.id))
    if out is not None and rep.documents:
        write_store(out, rep.documents)
    return rep


# --------------------------------------------------------------------------------------------- BIO

def char_bio(doc: Document) -> list[tuple[str, str]]:
    """(character, IOB2 tag) for every non-whitespace character of the document."""
    tags = ["O"] * len(doc.text)
    for s in doc.spans:
        tags[s.start] = f"B-{s.label}"
        for i in range(s.start + 1, s.end):
            tags[i] = f"I-{s.label}"
    return [(ch, tag) for ch, tag in zip(doc.text, tags) if not ch.isspace()]


def bio_text(docs: list[Document]) -> str:
    return "".join("".join(f"{ch} {tag}\n" for ch, tag in char_bio(d)) + "\n" for d in docs)


# --------------------------------------------------------------------------------------------- CLI

def _err(msg: str, code: int = 2) -> int:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return code


def _guarded(fn):
    """Run a command; known failures become one line on stderr and exit code 2, never a traceback."""
    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args) or 0
        except (LabelStudioError, AnnotationError, ReadError, FileNotFoundError) as e:
            return _err(str(e))
        except Exception as e:
            msg = explain(e, getattr(args, "url", None) or os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL)
            if msg is None:
                raise
            return _err(msg)
    return run


def _connect(args) -> Server:
    return Server.connect(args.url, args.api_key)


def _refuse_overwrite(path: str | Path, force: bool) -> None:
    if Path(path).exists() and not force:
        raise LabelStudioError(f"{path} exists: pass --force to overwrite it")


def _report(lines: list[str], prefix: str) -> None:
    for line in lines:
        print(f"{prefix}: {line}", file=sys.stderr)


@_guarded
def cmd_config(args) -> int:
    print(label_config(), end="")
    return 0


@_guarded
def cmd_push(args) -> int:
    collected = collect_documents(args.paths, args.annotations)  # local problems first
    if not collected[0]:
        raise LabelStudioError("nothing to push: " + ("; ".join(collected[1]) or "no documents"))
    if args.model:
        check_model_dir(args.model)
    server = _connect(args)
    rep = push(server, args.paths, args.project, model=args.model, annotations=args.annotations,
               max_length=args.max_length, stride=args.stride, batch_size=args.batch_size, collected=collected)
    _report(rep.notes, "note")
    verb = "created" if rep.created else "reused"
    line = (f"project {args.project!r} (id {rep.project_id}, {verb}): {len(rep.imported)} task(s) imported, "
            f"{rep.with_annotations} with annotations")
    if rep.model_version:
        line += (f", {rep.with_predictions} prediction(s) from {rep.model_version} (least confident first; "
                 f"project set to uncertainty sampling)")
    if rep.existing:
        line += f", {len(rep.existing)} already there"
    print(line)
    print(f"open: {server.project_url(rep.project_id)}")
    return 0


def _report_pull(rep) -> None:
    _report(rep.notes, "note")
    _report(rep.skipped, "skipped")
    _report(rep.invalid, "invalid")


@_guarded
def cmd_pull(args) -> int:
    _refuse_overwrite(args.out, args.force)
    server = _connect(args)
    rep = pull(server, args.project, args.out)
    _report_pull(rep)
    if not rep.documents:
        return _err(f"nothing written: no task of project {args.project!r} has a usable annotation", 1)
    n = sum(len(d.spans) for d in rep.documents)
    print(f"{args.out}: {len(rep.documents)} document(s), {n} spans; {len(rep.skipped)} task(s) skipped"
          + (f", {len(rep.invalid)} invalid" if rep.invalid else ""))
    return 1 if rep.invalid else 0


@_guarded
def cmd_bio(args) -> int:
    _refuse_overwrite(args.out, args.force)
    invalid: list[str] = []
    if args.from_store:
        docs = load_corpus(args.from_store)
    else:
        rep = pull(_connect(args), args.project)
        _report_pull(rep)
        docs, invalid = rep.documents, rep.invalid
    if not docs:
        return _err("nothing written: no annotated document", 1)
    body = bio_text(docs)
    atomic_write_text(args.out, body)
    chars = body.count("\n") - len(docs)  # a line per character, a blank line per document
    print(f"{args.out}: {len(docs)} document(s), {chars} characters, character-level BIO")
    return 1 if invalid else 0


def _help(parser):
    def show(args) -> int:
        parser.print_help()
        return 2
    return show


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``ls`` command group to the `nlp` CLI's subparsers."""
    ls = subparsers.add_parser(
        "ls", help="Label Studio: push documents and predictions, pull annotations",
        description="The annotation loop with a Label Studio server (label-studio-sdk 2.x). Connection: --url/"
                    "--api-key or LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY. Errors are one line, exit code 2.")
    ls.set_defaults(func=_help(ls))
    sub = ls.add_subparsers(dest="action", metavar="ACTION")

    def conn(sp):
        sp.add_argument("--url", default=None, help=f"server URL (default: $LABEL_STUDIO_URL or {DEFAULT_URL})")
        sp.add_argument("--api-key", default=None, help="API key (default: $LABEL_STUDIO_API_KEY)")

    c = sub.add_parser("config", help="print the labeling config generated from the schema",
                       description="ENTITY, METRIC, VALUE, PERIOD with colours and hotkeys (e, m, v, p); "
                                   "validated with label-studio-sdk's LabelInterface.")
    c.set_defaults(func=cmd_config)

    p = sub.add_parser("push", help="import documents as tasks (with predictions / annotations)",
                       description="Create or reuse the project TITLE and import documents: text files (any "
                                   "encoding nlp.reader reads), annotation store files (*.json) or folders. "
                                   "Documents already in the project (same file name) are not imported again.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="text files, store files or folders")
    p.add_argument("--project", required=True, metavar="TITLE", help="project title (created if missing)")
    p.add_argument("--model", metavar="DIR",
                   help="attach this model's spans as predictions (model_version = DIR's name) and order tasks "
                        "least confident first (mean span score), with the project on uncertainty sampling")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--annotations", dest="annotations", action="store_true", default=None,
                   help="push the spans of store files as annotations (default: only for files in a 'gold' folder)")
    g.add_argument("--no-annotations", dest="annotations", action="store_false",
                   help="push the text only, even from gold store files")
    p.add_argument("--max-length", type=int, default=None,
                   help="model window length in tokens (with --model; default: the model's training config)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens shared by neighbouring windows (with --model; default: the model's training config)")
    p.add_argument("--batch-size", type=int, default=16)
    conn(p)
    p.set_defaults(func=cmd_push)

    q = sub.add_parser("pull", help="export annotations into an annotation store file",
                       description="Writes the store format (Label Studio JSON, validated, atomic). Tasks without "
                                   "annotation or only cancelled ones are reported and skipped; of several "
                                   "annotations the ground-truth one wins, else the latest (updated_at, created_at).")
    q.add_argument("--project", required=True, metavar="TITLE")
    q.add_argument("--out", required=True, metavar="FILE", help="store file to write")
    q.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    conn(q)
    q.set_defaults(func=cmd_pull)

    b = sub.add_parser("bio", help="character-level BIO (CoNLL style) from a project or store files",
                       description="One character per line ('快 B-ENTITY'), a blank line after each document, "
                                   "whitespace characters left out. (Label Studio's CONLL2003 export splits on "
                                   "whitespace and makes a whole Chinese clause one token.)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--project", metavar="TITLE", help="pull the annotations of this project")
    src.add_argument("--from", dest="from_store", nargs="+", metavar="STORE", help="store files or folders")
    b.add_argument("--out", required=True, metavar="FILE")
    b.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    conn(b)
    b.set_defaults(func=cmd_bio)
    return ls
