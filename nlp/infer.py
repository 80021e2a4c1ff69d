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
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .align import PredictedSpan, decode, predict_documents, read_lexicon
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
    on CPU, spans may differ slightly from the float model (BENCHMARKS.md has both)."""

    def __init__(self, model_dir: str | Path, device: str | None = None, batch_size: int = 16,
                 max_length: int | None = None, stride: int | None = None, facts: bool = True,
                 int8: bool = False):
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
        """Extract from many documents, `batch_size` documents at a time (their windows batched together)."""
        if docs is not None:
            texts, docs = list(texts), list(docs)
            if len(texts) != len(docs):
                raise ValueError(f"pipe: {len(texts)} texts but {len(docs)} document names")
        names = iter(docs) if docs is not None else None
        buf: list[str] = []
        for t in texts:
            buf.append(t)
            if len(buf) >= batch_size:
                yield from self._flush(buf, names)
                buf = []
        if buf:
            yield from self._flush(buf, names)

    def _flush(self, buf: list[str], names) -> Iterator[ExtractedDoc]:
        for text, spans in zip(buf, self.spans(buf)):
            yield self._finish(text, spans, next(names) if names is not None else None)


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
