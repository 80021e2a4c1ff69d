"""Stage 6: span inference on new reports, and the Python API.

    from nlp import load
    extractor = load("runs/main")          # a run directory of `nlp train`, or any saved model directory
    doc = extractor(text)                  # -> ExtractedDoc with .spans and .facts (typed, with to_dict())
    docs = list(extractor.pipe(texts, batch_size=32))

Any length of input: the normalized text is tokenized once and cut into windows that end at sentence ends
(overlapping only inside a sentence longer than a window); windows of many documents are batched together
(on the GPU when there is one); per-token logits are averaged where windows overlap and decoded with
Viterbi plus the schema's boundary rules (`align.decode`); spans come back at ORIGINAL character offsets
with a confidence score each.

`pipe` on a GPU keeps the GPU for the forward pass alone: normalization, tokenization and windows, and
merging, decoding and fact building run in a pool of worker processes (`workers`; default on a GPU: the
usable CPU cores less one, at most 32; on a CPU none, the forward pass already uses every core), so the CPU
work of the next and the previous documents overlaps the GPU's.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .align import (PredictedSpan, Window, decode, merge_window_logits, o_tag_index, predict_documents, predict_logits,
                    prepare_document, read_lexicon, word_bounds)
from .config import check_model_dir, run_settings


@dataclass
class ExtractedDoc:
    doc: str | None
    text: str
    spans: list[PredictedSpan]
    facts: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"doc": self.doc,
                "spans": [{**asdict(s), "score": round(s.score, 4)} for s in self.spans],
                "facts": [f.to_dict() for f in self.facts]}


class Extractor:
    """A loaded model plus the fact builder. Thread-safe: tokenization and the forward pass are guarded by
    a lock per extractor (fast tokenizers must not be used from two threads at once).

    `int8=True` quantizes the linear layers to int8 for CPU inference (torch dynamic quantization): faster
    on CPU, spans may differ slightly from the float model (BENCHMARKS.md has both). Its activation scale
    is computed per forward batch, so with int8 `pipe` reads one document at a time, like `extractor(text)`:
    a document's result never depends on the documents beside it.

    `workers`: processes `pipe` uses for the CPU work around the forward pass (None: on a CUDA device the
    usable CPU cores less one, at most 32; otherwise 0). Started on the first `pipe` and kept; `close()` (or
    the end of the process) stops them. In fp32 the output equals the in-process path's (tested); in bf16
    on a GPU, windows batched in other company can differ in the last bits of a logit. A worker that dies
    (out of memory, say) makes `pipe` raise instead of wait."""

    def __init__(self, model_dir: str | Path, device: str | None = None, batch_size: int = 16,
                 max_length: int | None = None, stride: int | None = None, facts: bool = True,
                 int8: bool = False, workers: int | None = None):
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        model_dir = check_model_dir(model_dir, hint="; train one with `nlp train`")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every load
        self.model_dir = model_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        if int8:
            if self.device.type != "cpu":
                raise ValueError("int8 (dynamic quantization) is for CPU inference")
            import warnings

            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; the kernels work
                warnings.simplefilter("ignore")
                self.model = quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.id2tag = {int(k): v for k, v in self.model.config.id2label.items()}
        settings = run_settings(model_dir, max_length, stride)
        self.max_length, self.stride = settings["max_length"], settings["stride"]
        self.lexicon = read_lexicon(model_dir)  # training terms (lexicon.json), None for models trained elsewhere
        self.batch_size = batch_size
        self.with_facts = facts
        if workers is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = max(0, min(32, cores - 1)) if self.device.type == "cuda" else 0
        if workers < 0:
            raise ValueError(f"workers must be >= 0, not {workers}")
        self.workers = 0 if int8 else workers
        self.int8 = int8
        self._pool = None
        self._lock = threading.Lock()

    def spans(self, texts: list[str]) -> list[list[PredictedSpan]]:
        with self._lock:
            results = predict_documents(self.model, self.tokenizer, texts, self.max_length, self.stride,
                                        self.batch_size, self.device)
        return [decode(enc, logits, self.id2tag, self.lexicon) for enc, logits in results]

    def _finish(self, text: str, spans: list[PredictedSpan], doc: str | None) -> ExtractedDoc:
        facts = []
        if self.with_facts:
            from .facts import build_facts

            facts = build_facts(text, spans, doc=doc)
        return ExtractedDoc(doc=doc, text=text, spans=spans, facts=facts)

    def __call__(self, text: str, doc: str | None = None) -> ExtractedDoc:
        return self._finish(text, self.spans([text])[0], doc)

    def pipe(self, texts: Iterable[str], batch_size: int = 32, docs: Iterable[str] | None = None) -> Iterator[ExtractedDoc]:
        """Extract from many documents, in order. In this process: `batch_size` documents at a time, their
        windows batched together (one at a time with int8). With `workers`: a stream, `workers` documents per
        group of forward passes, the pool preparing the next group and completing the previous ones.
        `texts` and `docs` (names) are read lazily; they must be equally long."""
        items = _zip_names(texts, docs)
        if self.workers:
            yield from self._pipe_parallel(items)
            return
        size = 1 if self.int8 else batch_size
        buf: list[tuple[str, str | None]] = []
        for item in items:
            buf.append(item)
            if len(buf) >= size:
                yield from self._flush(buf)
                buf = []
        if buf:
            yield from self._flush(buf)

    def _flush(self, buf: list[tuple[str, str | None]]) -> Iterator[ExtractedDoc]:
        for (text, doc), spans in zip(buf, self.spans([t for t, _ in buf])):
            yield self._finish(text, spans, doc)

    def _worker_state(self) -> dict:
        return {"tokenizer": self.tokenizer, "max_length": self.max_length, "stride": self.stride,
                "id2tag": self.id2tag, "lexicon": self.lexicon, "facts": self.with_facts,
                "n_tags": self.model.config.num_labels, "o_index": o_tag_index(self.model.config.id2label)}

    def _get_pool(self):
        with self._lock:
            if self._pool is None:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor

                # fork (Linux): the workers start at once with the tokenizer and the word dictionary in memory;
                # they never touch the model. Elsewhere fork is unsafe with system frameworks: spawn.
                fork = sys.platform.startswith("linux")
                if fork:
                    word_bounds("")
                ctx = mp.get_context("fork" if fork else "spawn")
                before = os.environ.get("TOKENIZERS_PARALLELISM")
                os.environ["TOKENIZERS_PARALLELISM"] = "false"  # each worker tokenizes on one thread
                try:
                    pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                               initargs=(self._worker_state(),))
                    # the executor starts its processes on demand: start them all now, inside this setting
                    for f in [pool.submit(os.getpid) for _ in range(self.workers)]:
                        f.result()
                finally:
                    if before is None:
                        os.environ.pop("TOKENIZERS_PARALLELISM", None)
                    else:
                        os.environ["TOKENIZERS_PARALLELISM"] = before
                self._pool = pool
            return self._pool

    def _pipe_parallel(self, items: Iterator[tuple[str, str | None]]) -> Iterator[ExtractedDoc]:
        """Groups of `workers` documents: windows cut in the pool one group ahead of the forward pass (this
        process, on the GPU); completed (merge, decode, facts) in the pool while the next group's forward
        pass runs; yielded in input order. Only token ids come to this process and only logits go back (a
        worker tokenizes its document again rather than ship the encoding around: this process, not the
        workers, is what limits throughput). A worker that dies breaks the pool: `pipe` raises."""
        from concurrent.futures.process import BrokenProcessPool

        pool = self._get_pool()
        try:
            yield from self._stream(pool, items)
        except BrokenProcessPool as e:
            self.close()  # the next pipe starts a fresh pool
            raise RuntimeError("a worker process of pipe died (out of memory?); its documents were not "
                               "extracted") from e

    def _stream(self, pool, items: Iterator[tuple[str, str | None]]) -> Iterator[ExtractedDoc]:
        group = self.workers

        def next_group():
            batch = [x for _, x in zip(range(group), items)]
            return batch, [pool.submit(_prepare, t) for t, _ in batch]

        pending: deque = deque()

        def done() -> ExtractedDoc:
            text, doc, fut = pending.popleft()
            spans, facts = fut.result()
            return ExtractedDoc(doc=doc, text=text, spans=spans, facts=facts)

        batch, ahead = next_group()
        while batch:
            prepared = [f.result() for f in ahead]
            current = batch
            batch, ahead = next_group()
            windows = [Window(j, int(first), ids[o:o + m])
                       for j, (ids, firsts, lengths) in enumerate(prepared)
                       for first, o, m in zip(firsts, np.cumsum(lengths) - lengths, lengths)]
            with self._lock:  # the model, as in `spans`
                logits = predict_logits(self.model, windows, self.batch_size, self.tokenizer.pad_token_id,
                                        self.device) if windows else []
            i = 0
            for (text, doc), (_, firsts, _) in zip(current, prepared):
                lg = np.concatenate(logits[i:i + len(firsts)]) if len(firsts) else None
                i += len(firsts)
                pending.append((text, doc, pool.submit(_complete, text, lg, doc)))
            while pending and (pending[0][2].done() or len(pending) > 4 * group):
                yield done()
        while pending:
            yield done()

    def close(self) -> None:
        """Stop the worker processes (if `pipe` started any)."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------------- pool workers (module level: picklable)
_WORKER: dict = {}


def _worker_init(state: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _WORKER.update(state)
    word_bounds("")  # the word dictionary, before the first document (inherited already when forked)


def _zip_names(texts: Iterable[str], docs: Iterable[str] | None) -> Iterator[tuple[str, str | None]]:
    """(text, name) pairs, lazily; unequal lengths are an error (checked at once when both have a length)."""
    if docs is None:
        for t in texts:
            yield t, None
        return
    if hasattr(texts, "__len__") and hasattr(docs, "__len__") and len(texts) != len(docs):
        raise ValueError(f"pipe: {len(texts)} texts but {len(docs)} document names")
    end = object()
    texts_it, docs_it = iter(texts), iter(docs)
    while True:
        t, d = next(texts_it, end), next(docs_it, end)
        if t is end and d is end:
            return
        if t is end or d is end:
            raise ValueError("pipe: texts and document names differ in number")
        yield t, d


def _prepare(text: str):
    """A document's windows, compact: (token ids of all windows one after the other, first token of each,
    length of each)."""
    w = _WORKER
    _, windows = prepare_document(w["tokenizer"], text, w["max_length"], w["stride"])
    ids = np.array([t for win in windows for t in win.input_ids], dtype=np.int64)
    return (ids, np.array([win.first for win in windows], dtype=np.int64),
            np.array([len(win.input_ids) for win in windows], dtype=np.int64))


def _complete(text: str, logits, doc: str | None):
    """Spans and facts of a document from its windows' logits (one after the other, as `_prepare` cut them)."""
    w = _WORKER
    enc, windows = prepare_document(w["tokenizer"], text, w["max_length"], w["stride"])
    parts = np.split(logits, np.cumsum([len(win.input_ids) for win in windows])[:-1]) if windows else []
    merged = merge_window_logits(len(enc.ids), windows, parts, w["n_tags"], w["o_index"])
    spans = decode(enc, merged, w["id2tag"], w["lexicon"])
    facts = []
    if w["facts"]:
        from .facts import build_facts

        facts = build_facts(text, spans, doc=doc)
    return spans, facts


def load(model_dir: str | Path, **kwargs) -> Extractor:
    """Load a trained model directory as an Extractor (see the module docstring)."""
    return Extractor(model_dir, **kwargs)


def latest_run(runs_dir: str | Path = "runs") -> Path:
    """The most recently written model directory under `runs_dir` (clear error when there is none)."""
    runs = Path(runs_dir)
    found = [p.parent for p in runs.glob("**/model.safetensors")
             if (p.parent / "config.json").is_file() and "checkpoint" not in p.parent.name
             and not p.parent.name.startswith(".")] if runs.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no trained model under {runs}/: train one with `nlp train` or pass --model DIR")
    return max(found, key=lambda p: (p / "model.safetensors").stat().st_mtime)
