"""Inference on real seed text with the smoke-trained model: spans at original offsets, the Python API
(twice, in threads, pipe), and `nlp extract` on files, directories, standard input and bad files."""

import csv
import io
import json
import subprocess
import sys
import threading

import pytest

from nlp import load
from nlp.cli import main
from nlp.infer import latest_run
from nlp.reader import read_text

from conftest import ROOT, SEEDS

SEED0 = SEEDS / "000_bf5218bb65c99514.txt"
SEED1 = SEEDS / "001_3b8c966c9b7f5990.txt"


@pytest.fixture(scope="module")
def extractor(smoke_run):
    return load(smoke_run[1])


def _check_spans(doc):
    for s in doc.spans:
        assert 0 <= s.start < s.end <= len(doc.text)
        assert doc.text[s.start:s.end] == s.text and s.text == s.text.strip()
        assert s.label in ("ENTITY", "METRIC", "VALUE", "PERIOD") and 0.0 < s.score <= 1.0
    values = {(s.start, s.end) for s in doc.spans if s.label == "VALUE"}
    for f in doc.facts:
        assert tuple(f.value_span) in values
        a, b = f.evidence["sentence_span"]
        assert doc.text[a:b] == f.evidence["sentence"]


def test_spans_are_at_original_offsets_of_a_traditional_text(extractor):
    text = read_text(SEED1)  # Traditional characters, pinyin noise: the model reads the normalized view
    doc = extractor(text, doc=SEED1.name)
    assert doc.doc == SEED1.name and doc.text == text
    assert len([s for s in doc.spans if s.label == "VALUE"]) >= 10 and len(doc.facts) >= 10
    _check_spans(doc)
    assert any(s.text == "3342億元" for s in doc.spans)  # Traditional original text, found via the normalized view
    d = doc.to_dict()
    assert set(d) == {"doc", "spans", "facts"}
    json.dumps(d, ensure_ascii=False)


def test_long_document_is_windowed(extractor):
    """Three copies of a transcript in one document (hundreds of windows): the first copy, whose windows
    coincide with those of the transcript alone, gets exactly its spans; every copy gets about as many values
    (nothing is lost at window seams or far from the start)."""
    one = read_text(SEEDS / "003_9ce4267ae1db9f51.txt")
    sep = "\n\n"
    doc = extractor(sep.join([one] * 3))
    _check_spans(doc)
    alone = [(s.start, s.end, s.label) for s in extractor(one).spans if s.end < len(one) - 300]
    assert len(alone) > 50
    shift = len(one) + len(sep)
    first = [(s.start, s.end, s.label) for s in doc.spans if s.end < len(one) - 300]
    assert first == alone
    n_values = sum(1 for s in alone if s[2] == "VALUE")
    for k in range(3):
        copy = [s for s in doc.spans if s.label == "VALUE" and k * shift <= s.start and s.end < k * shift + len(one) - 300]
        assert abs(len(copy) - n_values) <= 0.25 * n_values, (k, len(copy), n_values)


def test_pipe_threads_and_loading_twice_agree(extractor, smoke_run):
    texts = [read_text(p) for p in sorted(SEEDS.glob("*.txt"))]
    one_by_one = [extractor(t).to_dict() for t in texts]
    assert [d.to_dict() for d in extractor.pipe(texts, batch_size=2)] == one_by_one
    second = load(smoke_run[1])
    assert second.lexicon == extractor.lexicon and "经调整净利润" in extractor.lexicon["METRIC"]  # lexicon.json
    results = [None] * len(texts)

    def work(i):
        results[i] = (second if i % 2 else extractor)(texts[i]).to_dict()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == one_by_one


def test_pipe_with_worker_processes_gives_the_same_documents(smoke_run, tmp_path, capsys):
    """`workers`: windows and completion in a pool of processes (what a GPU machine uses by default) give
    exactly the documents of the in-process path, in input order, names included, from lists or lazy
    iterables; `nlp extract --workers` writes the same files; a worker that dies makes pipe raise, not hang,
    and the next pipe works."""
    import os
    import signal

    texts = [read_text(p) for p in sorted(SEEDS.glob("*.txt"))] * 2
    names = [f"doc{i}" for i in range(len(texts))]
    alone = load(smoke_run[1], workers=0)
    pooled = load(smoke_run[1], workers=2)
    try:
        expected = [d.to_dict() for d in alone.pipe(texts, batch_size=4, docs=names)]
        assert sum(len(d["facts"]) for d in expected) > 20
        assert [d.to_dict() for d in pooled.pipe(texts, batch_size=4, docs=names)] == expected
        lazy = pooled.pipe(iter(texts[:3]), docs=(n for n in names[:3]))
        assert [d.to_dict() for d in lazy] == expected[:3]
        with pytest.raises(ValueError, match="differ in number"):
            list(pooled.pipe(iter(texts[:3]), docs=iter(names[:2])))
        pool = pooled._pool
        assert pool is not None  # kept for the next call
        os.kill(next(iter(pool._processes)), signal.SIGKILL)
        with pytest.raises(RuntimeError, match="worker process of pipe died"):
            list(pooled.pipe(texts[:4]))
        assert [d.to_dict() for d in pooled.pipe(texts[:2], docs=names[:2])] == expected[:2]
    finally:
        pooled.close()
    assert pooled._pool is None
    with pytest.raises(ValueError, match="workers"):
        load(smoke_run[1], workers=-1)
    outs = {}
    for w in ("0", "2"):
        outs[w] = tmp_path / f"out{w}"
        assert main(["extract", str(SEEDS), "--model", str(smoke_run[1]), "--workers", w, "--out", str(outs[w]),
                     "--quiet"]) == 0
    capsys.readouterr()
    files = sorted(p.name for p in outs["0"].iterdir())
    assert len(files) == 5 and files == sorted(p.name for p in outs["2"].iterdir())
    for f in files:
        assert (outs["0"] / f).read_text(encoding="utf-8") == (outs["2"] / f).read_text(encoding="utf-8")


def test_int8_pipe_reads_each_document_alone(smoke_run):
    """Dynamic int8 quantization scales activations per forward batch: pipe reads one document at a time,
    so a document's result does not depend on the documents beside it (and workers are not used)."""
    texts = [read_text(p) for p in sorted(SEEDS.glob("*.txt"))][:3]
    ex = load(smoke_run[1], int8=True, workers=2)
    assert ex.workers == 0
    alone = [ex(t).to_dict() for t in texts]
    assert [d.to_dict() for d in ex.pipe(texts, batch_size=3)] == alone
    assert [d.to_dict() for d in ex.pipe(texts[::-1], batch_size=3)] == alone[::-1]


def test_extract_cli_json_per_file_and_bad_inputs(smoke_run, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_bytes(read_text(SEED0).encode("gbk"))
    (inputs / "b.md").write_text(read_text(SEED1), encoding="utf-8")
    (inputs / "empty.txt").write_bytes(b"")
    (inputs / "binary.txt").write_bytes(b"\x00\x01" * 100)
    (inputs / "page.html").write_text("<html><head><script>var x=1;</script></head><body><p>快手三季度营收311亿元，"
                                      "同比增长11.4%。</p></body></html>", encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["extract", str(inputs), "--model", str(smoke_run[1]), "--format", "json", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1  # two inputs failed
    assert "empty.txt: empty" in err and "binary.txt: looks binary" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "page.json"]
    a = json.loads((out / "a.json").read_text(encoding="utf-8"))
    assert a["doc"] == "a.txt" and set(a) == {"doc", "spans", "facts"}
    text = read_text(SEED0)
    for s in a["spans"]:
        assert text[s["start"]:s["end"]] == s["text"]
    page = json.loads((out / "page.json").read_text(encoding="utf-8"))
    assert page["doc"] == "page.html"


def test_extract_cli_formats_and_stdin(smoke_run, tmp_path):
    model = str(smoke_run[1])
    cmd = [sys.executable, "-m", "nlp", "extract", "-", "--model", model, "--format", "jsonl", "--quiet"]
    res = subprocess.run(cmd, input=read_text(SEED0).encode("utf-8"), capture_output=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr.decode()
    rows = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert len(rows) == 1 and rows[0]["doc"] == "stdin"
    out = tmp_path / "facts.csv"
    assert main(["extract", str(SEED0), str(SEED1), "--model", model, "--format", "csv", "--out", str(out),
                 "--quiet"]) == 0
    table = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(table) >= 10 and {r["doc"] for r in table} == {SEED0.name, SEED1.name}
    assert set(table[0]) >= {"doc", "entity", "metric", "period", "value", "unit", "value_start"}
    text = read_text(SEED1)
    for r in table:
        if r["doc"] == SEED1.name:
            assert text[int(r["value_start"]):int(r["value_end"])] == r["value_text"]


def test_latest_run_and_missing_model(tmp_path):
    import os

    with pytest.raises(FileNotFoundError, match="no trained model under"):
        latest_run(tmp_path)
    for i, name in enumerate(("old", "new", "new/checkpoint", ".model.tmp", "no-config")):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"")
        if name != "no-config":
            (d / "config.json").write_text("{}")
        os.utime(d / "model.safetensors", (1e9 + i, 1e9 + i))  # later runs written later
    # the newest finished model: not a checkpoint, a half-moved temporary folder or a folder without config
    assert latest_run(tmp_path / "runs") == tmp_path / "runs" / "new"


@pytest.mark.parametrize("n,body,stride", [(1, 126, 32), (126, 126, 32), (127, 126, 32), (1000, 126, 32),
                                           (1000, 126, 0), (5000, 510, 64)])
def test_windows_cover_every_token_with_the_stated_overlap(n, body, stride):
    from nlp.align import window_starts

    starts = window_starts(n, body, stride)
    covered = [0] * n
    for s in starts:
        assert 0 <= s and s + min(body, n) <= n
        for i in range(s, min(s + body, n)):
            covered[i] += 1
    assert all(c >= 1 for c in covered)
    assert starts[0] == 0 and starts[-1] == max(0, n - body)
    for a, b in zip(starts, starts[1:-1]):
        assert b - a == body - stride  # neighbours share exactly `stride` tokens (the last is aligned to the end)


def test_bad_window_settings_are_refused(extractor):
    from nlp.align import encode, make_windows

    enc = encode(extractor.tokenizer, "快手三季度营收311亿元")
    with pytest.raises(ValueError, match="stride"):
        make_windows(extractor.tokenizer, enc, 64, 62)
    windows = make_windows(extractor.tokenizer, enc, 64, 16)
    assert len(windows) == 1 and windows[0].input_ids[0] == extractor.tokenizer.cls_token_id


@pytest.mark.parametrize("seed", [SEED0, SEEDS / "003_9ce4267ae1db9f51.txt"])
def test_sentence_windows_cover_the_text_and_end_at_sentence_ends(extractor, seed):
    from nlp.align import encode, sentence_window_bounds, window_starts

    enc = encode(extractor.tokenizer, read_text(seed))
    n, text = len(enc.ids), enc.norm.text
    bounds = sentence_window_bounds(enc, 62, 16)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (a, b), (c, d) in zip(bounds, bounds[1:]):
        assert 0 < b - a <= 62 and c <= b and (c == b or b - c == 16)  # no gap; overlap only at a forced cut
        if c == b:  # a clean cut: the text between the two windows breaks a sentence or a line
            tail = text[enc.offsets[b - 1][0]:enc.offsets[b][0] + 1]
            assert any(ch in tail for ch in "。！？!?；;\n"), tail
    fixed = sum(min(s + 62, n) - s for s in window_starts(n, 62, 16))
    assert sum(b - a for a, b in bounds) < 0.9 * fixed  # fewer tokens to read than fixed windows


def test_prediction_reads_only_sentences_that_can_hold_a_figure(extractor):
    """Every gold span that the figure-sentence rule keeps lies in the token ranges prediction reads; a
    sentence with no numeral is not read, and a text with none costs no forward pass at all."""
    from nlp.align import PredictedSpan, _figure_sentences_only, encode, figure_token_ranges, make_windows
    from nlp.annotations import load_corpus

    n_read = n_all = n_runs = n_lines = 0
    for doc in load_corpus(ROOT / "annotations" / "gold"):
        enc = encode(extractor.tokenizer, doc.text)
        ranges = figure_token_ranges(enc)
        assert all(a < b for a, b in ranges) and all(b < c for (_, b), (c, _) in zip(ranges, ranges[1:]))
        read = [(enc.norm.to_orig[enc.offsets[a][0]], enc.norm.to_orig[enc.offsets[b - 1][1] - 1] + 1)
                for a, b in ranges]
        spans = [PredictedSpan(s.start, s.end, s.label, s.text, 1.0) for s in sorted(doc.spans)]
        kept = _figure_sentences_only(doc.text, spans)
        assert len(kept) > 0.97 * len(spans)
        for sp in kept:  # every gold span the figure-sentence rule keeps is read
            assert any(a <= sp.start and sp.end <= b for a, b in read), (doc.doc, sp)
        # runs of sentences, not one range per line: consecutive lines with figures share a range
        n_runs += len(ranges)
        n_lines += sum(1 for a, b in read for line in doc.text[a:b].split("\n") if line.strip())
        n_read += sum(b - a for a, b in ranges)
        n_all += len(enc.ids)
        windows = make_windows(extractor.tokenizer, enc, 64, 16, sentences=True, ranges=ranges)
        assert {t for w in windows for t in range(w.first, w.first + len(w.input_ids) - 2)} == \
            {t for a, b in ranges for t in range(a, b)}
    assert 0.5 * n_all < n_read < 0.85 * n_all  # the seeds: about 30% of the text holds no numeral
    assert n_runs < 0.7 * n_lines

    calls = []
    hook = extractor.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert extractor("快手发布了新的财报，业绩超出市场预期。\n管理层表示将继续投入。").spans == []
        assert extractor("").spans == []
        assert calls == []
        extractor("快手第三季度营收311亿元。")
        assert len(calls) == 1
    finally:
        hook.remove()


def test_windows_and_forward_pass_decoded_like_the_pipeline_equal_the_pipeline(extractor, smoke_run):
    """transformers' token-classification pipeline (simple aggregation, stride) and `pipeline_decode` over
    our tokenization, windows and batched forward pass give the same spans on real seeds."""
    from transformers import pipeline

    from nlp.align import Window, encode, pipeline_decode, pipeline_window_bounds, predict_logits
    from nlp.annotations import strip_span
    from nlp.reader import normalize

    ex = load(smoke_run[1])
    tok = ex.tokenizer
    tok.model_max_length = ex.max_length
    pipe = pipeline("token-classification", model=ex.model, tokenizer=tok, aggregation_strategy="simple",
                    stride=ex.stride, device=ex.device)
    n_spans = 0
    for seed in (SEED0, SEED1):
        norm = normalize(read_text(seed))
        theirs = {(*strip_span(norm.text, int(e["start"]), int(e["end"])), e["entity_group"])
                  for e in pipe(norm.text)}
        enc = encode(tok, norm.text, norm)
        ws = [Window(0, a, [tok.cls_token_id, *enc.ids[a:b], tok.sep_token_id])
              for a, b in pipeline_window_bounds(len(enc.ids), ex.max_length - 2, ex.stride)]
        assert len(ws) > 3  # several overlapping windows: the overlap resolution is exercised
        ours = set(pipeline_decode(enc, ws, predict_logits(ex.model, ws, 8, tok.pad_token_id, ex.device),
                                   ex.id2tag))
        assert ours == theirs
        n_spans += len(ours)
    assert n_spans > 20
