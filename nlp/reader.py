"""Stage 1: read any input file to text, and build the normalized view the model sees.

`read_text(path)` decodes a file whatever its encoding (UTF-8 with or without BOM, UTF-16 with BOM,
GB18030/GBK, Big5), detected from the bytes, never from the extension.

`normalize(text)` returns a `NormalizedText`: the text the model reads (Traditional -> Simplified with
OpenCC, full-width ASCII -> half-width, markdown markers and pinyin artifacts removed, spaces inside Chinese
text removed) together with an exact character map back to the original, so that every span found in the
normalized view is reported at its offsets in the ORIGINAL text.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf")


class ReadError(ValueError):
    """A file that cannot be read as text; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------- decoding

_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _cjk_score(text: str) -> float:
    """Share of characters that are plausible in Chinese prose: CJK ideographs, CJK punctuation, ASCII."""
    if not text:
        return 0.0
    good = 0
    for ch in text:
        o = ord(ch)
        if 0x4E00 <= o <= 0x9FFF or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF or o < 0x80:
            good += 1
    return good / len(text)


def _common_score(text: str) -> float:
    """Share of ideographs that are common (in the GB2312 level-1 block once mapped to Simplified or in Big5
    level-1): cheap evidence that tells a right GBK decoding from a Big5 one that decodes by accident."""
    ideographs = [ch for ch in text if 0x4E00 <= ord(ch) <= 0x9FFF]
    if not ideographs:
        return 0.0
    common = 0
    for ch in ideographs:
        try:
            b = ch.encode("gb2312")
            if 0xB0 <= b[0] <= 0xD7:  # GB2312 level-1: the 3,755 most frequent Simplified characters
                common += 1
                continue
        except UnicodeEncodeError:
            pass
        try:
            b = ch.encode("big5")
            if 0xA4 <= b[0] <= 0xC6:  # Big5 level-1: the 5,401 frequent Traditional characters
                common += 1
        except UnicodeEncodeError:
            pass
    return common / len(ideographs)


def decode_bytes(data: bytes, name: str = "<bytes>") -> tuple[str, str]:
    """Decode `data`, returning (text, encoding). Raises ReadError naming `name` when it is not text."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError as e:
                raise ReadError(f"{name}: has a {enc} byte-order mark but does not decode ({e.reason} at byte {e.start})") from e
    if b"\x00" in data[:8192]:
        raise ReadError(f"{name}: looks binary (NUL bytes), not a text file")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    candidates = []
    for enc in ("gb18030", "big5"):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        candidates.append((_cjk_score(text), _common_score(text), enc, text))
    if not candidates:
        raise ReadError(f"{name}: not valid UTF-8, GB18030/GBK or Big5 text")
    candidates.sort(key=lambda c: (round(c[0], 2), c[1]), reverse=True)
    score, _, enc, text = candidates[0]
    if score < 0.8:
        raise ReadError(f"{name}: cannot tell the encoding (best guess {enc} gives mostly unusual characters)")
    return text, enc


def read_text(path: str | Path) -> str:
    """Read a .txt or .md file to text, detecting its encoding. Raises ReadError with the file's name."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReadError(f"{path}: cannot read ({e.strerror})") from e
    return decode_bytes(data, str(path))[0]


def read_document(path: str | Path) -> str:
    """Read any supported input to text: .txt/.md (any encoding), .html/.htm (visible text only) and .pdf
    (text layer, tables row by row). Raises ReadError naming the file when it is empty, binary, of an
    unsupported kind or (PDF) has no text layer."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ReadError(f"{path}: unsupported file type '{suffix or '(none)'}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if suffix == ".pdf":
        text = pdf_to_text(path)
    elif suffix in (".html", ".htm"):
        text = html_to_text(read_text(path))
    else:
        text = read_text(path)
    if not text.strip():
        raise ReadError(f"{path}: empty (no text{' layer: a scanned PDF?' if suffix == '.pdf' else ''})")
    return text


_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "section", "article",
               "header", "footer", "ul", "ol", "blockquote", "pre", "title", "dd", "dt"}
_HIDDEN_TAGS = {"script", "style", "noscript", "template", "head", "svg", "iframe"}


def html_to_text(html: str) -> str:
    """Visible text of an HTML page: scripts, styles and the head dropped, block elements on their own
    lines, table cells separated by tabs (so a table reads row by row)."""
    from html.parser import HTMLParser

    class _Visible(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.hidden = 0

        def handle_starttag(self, tag, attrs):
            if tag in _HIDDEN_TAGS:
                self.hidden += 1
            elif tag in ("td", "th"):
                self.parts.append("\t")
            elif tag in _BLOCK_TAGS:
                self.parts.append("\n")

        def handle_endtag(self, tag):
            if tag in _HIDDEN_TAGS:
                self.hidden = max(0, self.hidden - 1)
            elif tag in _BLOCK_TAGS:
                self.parts.append("\n")

        def handle_data(self, data):
            if not self.hidden:
                self.parts.append(re.sub(r"\s+", " ", data))

    p = _Visible()
    p.feed(html)
    p.close()
    lines = [re.sub(r"[ \t]*\t[ \t]*", "\t", ln).strip(" \t") for ln in "".join(p.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def pdf_to_text(path: Path) -> str:
    """Text layer of a PDF (pdfplumber): page text, with each table's rows as tab-separated lines."""
    import logging

    logging.getLogger("pdfminer").setLevel(logging.ERROR)  # font-descriptor chatter on every CJK page
    try:
        import pdfplumber
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ReadError(f"{path}: reading PDF needs pdfplumber (pip install pdfplumber)") from e
    try:
        pages = []
        with pdfplumber.open(path) as pdf:
            for page in pdf.pages:
                tables = page.find_tables()
                body = page.filter(lambda o: not any(_inside(o, t.bbox) for t in tables)) if tables else page
                parts = [body.extract_text() or ""]
                for t in tables:
                    rows = t.extract() or []
                    parts.append("\n".join("\t".join((c or "").replace("\n", "") for c in row) for row in rows))
                pages.append("\n".join(p for p in parts if p))
    except ReadError:
        raise
    except Exception as e:  # pdfminer raises many kinds on broken files
        raise ReadError(f"{path}: not a readable PDF ({type(e).__name__}: {e})") from e
    return "\n\n".join(pages)


def _inside(obj, bbox) -> bool:
    x0, top, x1, bottom = bbox
    return obj.get("x0", -1) >= x0 and obj.get("x1", 1e9) <= x1 and obj.get("top", -1) >= top and \
        obj.get("bottom", 1e9) <= bottom


# --------------------------------------------------------------------------------------------- normalizing

@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc  # the maintained OpenCC package (C++ core with Python bindings)

    return opencc.OpenCC("t2s")


_MARKDOWN = re.compile(r"\*{2,}|_{2,}|~~|^#{1,6}[ \t]+|^>[ \t]?", re.M)
# Pinyin left in Traditional text by a converter: 發(fā)布, 經(jīng)調(diào)整. Needs one tone-marked vowel, right after a
# CJK ideograph, so that ordinary brackets such as (含電商) or (UAX) are never taken.
_TONED = "āáǎàōóǒòēéěèīíǐìūúǔùǖǘǚǜńňǹḿ"
_PINYIN = re.compile(rf"(?<=[\u4e00-\u9fff])\((?=[a-zü{_TONED}]*[{_TONED}])[a-zü{_TONED}]{{1,7}}\)")
_HSPACE = " \t\u00a0\u3000\u2002\u2003\u2009\u200b"


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFF65 \
        or ch in "，。、；：？！“”‘’（）《》【】…—"


# CJK radicals that PDF fonts hand out instead of the full character and that NFKC leaves alone
# (the Kangxi radicals U+2F00.. do decompose under NFKC).
_RADICALS = dict(zip("⻅⻆⻈⻉⻋⻐⻓⻔⻙⻚⻛⻜⻠⻢⻥⻦⻧⻨⻩⻪⻬⻮⻰⻳", "见角讠贝车钅长门韦页风飞饣马鱼鸟卤麦黄黾齐齿龙龟"))


def _half_width(ch: str) -> str:
    """Full-width ASCII -> ASCII; Kangxi radicals and compatibility ideographs (PDF text layers are full
    of them: ⼿ for 手) -> the unified ideograph. One character in, one out: the map stays exact."""
    o = ord(ch)
    if 0xFF01 <= o <= 0xFF5E:
        return chr(o - 0xFEE0)
    if ch == "\u3000":
        return " "
    if 0x2E80 <= o <= 0x2FDF or 0xF900 <= o <= 0xFAFF:
        n = _RADICALS.get(ch) or unicodedata.normalize("NFKC", ch)
        return n if len(n) == 1 else ch
    return ch


@dataclass(frozen=True)
class NormalizedText:
    """The normalized view of `original`, with `to_orig[i]` = original index of normalized character i."""

    original: str
    text: str
    to_orig: tuple[int, ...]

    def span_to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a normalized span [start, end) to the original text. Noise that was removed between the
        first and last character (markdown markers, inner spaces, pinyin) lies inside the returned span."""
        if not 0 <= start < end <= len(self.text):
            raise ValueError(f"span [{start}, {end}) outside the normalized text of length {len(self.text)}")
        return self.to_orig[start], self.to_orig[end - 1] + 1

    @functools.cached_property
    def from_orig(self) -> tuple[int, ...]:
        """For each original index, the normalized index of the first kept character at or after it."""
        out = [len(self.text)] * (len(self.original) + 1)
        j = len(self.text)
        kept = {o: i for i, o in enumerate(self.to_orig)}
        for i in range(len(self.original), -1, -1):
            if i in kept:
                j = kept[i]
            out[i] = j
        return tuple(out)

    def span_to_normalized(self, start: int, end: int) -> tuple[int, int]:
        """Map an original span to the normalized view (characters removed at its edges drop out)."""
        s = self.from_orig[start]
        e = self.from_orig[end]
        if e <= s:
            raise ValueError(f"original span [{start}, {end}) holds only removed characters")
        return s, e


def normalize(original: str) -> NormalizedText:
    """Build the model's view of `original` with an exact map back to it (see module docstring)."""
    n = len(original)
    keep = [True] * n
    for rx in (_MARKDOWN, _PINYIN):
        for m in rx.finditer(original):
            for i in range(m.start(), m.end()):
                keep[i] = False
    # Runs of horizontal space whose nearest kept neighbours are both CJK (or CJK and a digit): removed.
    i = 0
    while i < n:
        if original[i] in _HSPACE and keep[i]:
            j = i
            while j < n and (original[j] in _HSPACE or not keep[j]):
                j += 1
            k = i - 1
            while k >= 0 and not keep[k]:
                k -= 1
            left = original[k] if k >= 0 else ""
            right = original[j] if j < n else ""
            if left and right and (_is_cjk(left) or _is_cjk(right)) and \
                    (_is_cjk(left) or left.isdigit() or left in "%.") and (_is_cjk(right) or right.isdigit()):
                for t in range(i, j):
                    keep[t] = False
            i = j
        else:
            i += 1
    idx = [i for i in range(n) if keep[i]]
    kept = "".join(_half_width(original[i]) for i in idx)
    simplified = _convert_same_length(kept)
    return NormalizedText(original=original, text=simplified, to_orig=tuple(idx))


def _convert_same_length(text: str) -> str:
    """OpenCC t2s, kept character-aligned: lines whose phrase conversion changes length fall back to
    character-by-character conversion (t2s almost never changes length; this keeps the map exact)."""
    cc = _t2s()
    out = []
    for line in text.splitlines(keepends=True):
        conv = cc.convert(line)
        if len(conv) != len(line):
            conv = "".join(c if len(c := cc.convert(ch)) == 1 else ch for ch in line)
        out.append(conv)
    return "".join(out)


def normalize_char(ch: str) -> str:
    """What one original character becomes on its own (used by tests of the map)."""
    c = _t2s().convert(_half_width(ch))
    return c if len(c) == 1 else ch

