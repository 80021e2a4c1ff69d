"""Reading every encoding, and the normalized view's character map, on real seed text."""

import pytest

from nlp.annotations import load_corpus
from nlp.reader import ReadError, normalize, normalize_char, read_text

from conftest import GOLD, chromium

SIMPLIFIED = "快手科技发布2024年第二季度业绩，总营收同比增长11.6%至约310亿元，经调整净利润同比增长73.7%达46.8亿元左右。"
TRADITIONAL = "快手三季度營收311億元，電商GMV達3342億元，經調整淨利潤39億元，同比增長24.4%。"


@pytest.mark.parametrize("text,encoding", [
    (SIMPLIFIED, "utf-8"), (SIMPLIFIED, "utf-8-sig"), (SIMPLIFIED, "gbk"), (SIMPLIFIED, "gb18030"),
    (SIMPLIFIED, "utf-16"), (TRADITIONAL, "big5"), (TRADITIONAL, "utf-8"), (TRADITIONAL, "gb18030"),
])
def test_reads_each_encoding(tmp_path, text, encoding):
    # .md for some, .txt for others: the extension says nothing about the encoding
    p = tmp_path / f"report-{encoding}.{'md' if 'gb' in encoding else 'txt'}"
    p.write_bytes(text.encode(encoding))
    assert read_text(p) == text


def test_short_gbk_and_big5_are_told_apart(tmp_path):
    (tmp_path / "a.txt").write_bytes("营收311亿元".encode("gbk"))
    (tmp_path / "b.txt").write_bytes("營收311億元".encode("big5"))
    assert read_text(tmp_path / "a.txt") == "营收311亿元"
    assert read_text(tmp_path / "b.txt") == "營收311億元"


def test_a_whole_seed_survives_gbk_and_big5(tmp_path, seed_paths):
    simp = read_text(seed_paths[0])
    (tmp_path / "gbk.txt").write_bytes(simp.encode("gbk"))
    assert read_text(tmp_path / "gbk.txt") == simp
    trad = read_text(seed_paths[1]).encode("big5", errors="ignore").decode("big5")
    (tmp_path / "big5.txt").write_bytes(trad.encode("big5"))
    assert read_text(tmp_path / "big5.txt") == trad


def test_bad_input_names_the_file(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00\x01\x02PK\x03\x04" * 50)
    with pytest.raises(ReadError, match="x.bin.*binary"):
        read_text(tmp_path / "x.bin")
    with pytest.raises(ReadError, match="missing.txt"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_text(tmp_path / "empty.txt") == ""


def test_normalized_view():
    n = normalize("## 快手**營收**３１１億元 ，經(jīng)調(diào)整淨利潤 同比 增長２４.４％（含電商）")
    assert n.text == "快手营收311亿元,经调整净利润同比增长24.4%(含电商)"
    # the map: every normalized character points at its original
    for j, ch in enumerate(n.text):
        assert normalize_char(n.original[n.to_orig[j]]) == ch


def test_pdf_radicals_become_ideographs():
    n = normalize("快⼿⼆季度营收同⽐增⻓")  # radicals as PDF text layers give them
    assert n.text == "快手二季度营收同比增长"


def test_spaces_between_latin_words_are_kept():
    n = normalize("外循环营销产品 Universal Auto X (UAX)在各行业")
    assert "Universal Auto X (UAX)" in n.text


def test_span_maps_back_to_original_offsets():
    original = "短剧日活用户破****3****亿，人民币26.9亿 元"
    n = normalize(original)
    s = n.text.index("3亿")
    a, b = n.span_to_original(s, s + 2)
    assert original[a:b] == "3****亿"
    s = n.text.index("人民币26.9亿元")
    a, b = n.span_to_original(s, s + len("人民币26.9亿元"))
    assert original[a:b] == "人民币26.9亿 元"
    assert n.span_to_normalized(a, b) == (s, s + len("人民币26.9亿元"))


def test_map_round_trip_on_every_seed(seed_paths):
    for path in seed_paths:
        original = read_text(path)
        n = normalize(original)
        assert len(n.to_orig) == len(n.text)
        assert list(n.to_orig) == sorted(set(n.to_orig)), f"{path.name}: map not strictly increasing"
        for j, i in enumerate(n.to_orig):
            # each kept original character maps to itself or to its normalized counterpart
            assert n.text[j] in (original[i], normalize_char(original[i])), (path.name, i, original[i], n.text[j])
        removed = set(range(len(original))) - set(n.to_orig)
        for i in removed:  # only noise is removed
            assert original[i] in " \t\u00a0\u3000*_~#>()" or original[i].isalpha(), (path.name, i, repr(original[i]))


def test_every_gold_span_round_trips_through_the_normalized_view():
    docs = load_corpus(GOLD)
    assert len(docs) == 5
    for d in docs:
        n = normalize(d.text)
        for sp in d.spans:
            s, e = n.span_to_normalized(sp.start, sp.end)
            assert n.span_to_original(s, e) == (sp.start, sp.end), (d.doc, sp)


def test_traditional_seed_becomes_simplified(seed_paths):
    n = normalize(read_text(seed_paths[1]))
    assert "营收311亿元" in n.text and "经调整净利润39亿元" in n.text
    assert "(fā)" not in n.text and "發" not in n.text


def test_html_visible_text_only(tmp_path):
    from nlp.reader import read_document

    p = tmp_path / "news.html"
    p.write_bytes("<html><head><title>t</title><style>p{color:red}</style><script>var a='营收1亿元';</script>"
                  "</head><body><p>快手三季度营收311亿元</p><table><tr><th>指标</th><th>数值</th></tr>"
                  "<tr><td>电商GMV</td><td>3342亿元</td></tr></table></body></html>".encode("gbk"))
    text = read_document(p)
    assert "快手三季度营收311亿元" in text and "电商GMV\t3342亿元" in text
    assert "营收1亿元" not in text and "color" not in text


def test_pdf_text_layer_with_table_and_scanned_pdf(tmp_path):
    from nlp.reader import read_document

    page = tmp_path / "filing.html"
    page.write_text("<html><body><p>快手科技2024年第三季度业绩：总营收311亿元，同比增长11.4%。</p>"
                    "<table border=1><tr><th>指标</th><th>2024年第三季度</th></tr>"
                    "<tr><td>经调整净利润</td><td>39亿元</td></tr>"
                    "<tr><td>电商GMV</td><td>3342亿元</td></tr></table></body></html>", encoding="utf-8")
    pdf = tmp_path / "filing.pdf"
    chromium(page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    n = normalize(read_document(pdf))
    flat = "".join(n.text.split())
    assert "总营收311亿元,同比增长11.4%" in flat
    rows = [line for line in n.text.splitlines() if "\t" in line]
    assert any(r.replace(" ", "").startswith("电商GMV\t3342亿元") for r in rows), rows  # a table row per line
    scan = tmp_path / "scan.html"
    scan.write_text("<html><body><svg width='400' height='200'><rect width='400' height='200' fill='gray'/>"
                    "</svg></body></html>", encoding="utf-8")
    scanned = tmp_path / "scan.pdf"
    chromium(scan, f"--print-to-pdf={scanned}", "--no-pdf-header-footer")
    with pytest.raises(ReadError, match="scan.pdf: empty.*scanned PDF"):
        read_document(scanned)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(ReadError, match="broken.pdf"):
        read_document(tmp_path / "broken.pdf")
    with pytest.raises(ReadError, match="unsupported file type '.docx'"):
        read_document(tmp_path / "x.docx")
