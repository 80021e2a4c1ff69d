"""The HTML view, rendered for real in headless Chromium: what the page shows, and a screenshot."""

import pytest

from nlp.align import PredictedSpan
from nlp.annotations import load_corpus
from nlp.facts import build_facts
from nlp.infer import ExtractedDoc
from nlp.view import COLOURS, render_html

from conftest import GOLD, chromium


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    doc = next(d for d in load_corpus(GOLD) if d.doc.startswith("000"))
    spans = [PredictedSpan(s.start, s.end, s.label, s.text, 1.0) for s in doc.spans]
    extracted = ExtractedDoc(doc=doc.doc, text=doc.text, spans=spans, facts=build_facts(doc.text, spans))
    out = tmp_path_factory.mktemp("view")
    html_path = out / "000.html"
    html_path.write_text(render_html(extracted), encoding="utf-8")
    run = lambda *extra: chromium(html_path, *extra)  # noqa: E731
    dom = run("--virtual-time-budget=2000", "--dump-dom").stdout
    shot = out / "000.png"
    run("--window-size=1200,1600", f"--screenshot={shot}")
    text_pdf = out / "000.pdf"
    run(f"--print-to-pdf={text_pdf}", "--no-pdf-header-footer")
    return extracted, dom, shot, text_pdf


def test_page_shows_highlighted_spans_legend_and_facts(page):
    extracted, dom, _, _ = page
    assert dom.count("<mark ") == len(extracted.spans)
    assert 'class="VALUE" id="v0"' in dom
    assert dom.count('<a href="#v') == 2 * len(extracted.facts)  # every fact links to its evidence, twice
    for label in COLOURS:
        assert f">{label}</span>" in dom  # legend
    assert "约310亿元" in dom and "46.8亿元左右" in dom


def test_screenshot_shows_the_label_colours(page):
    from PIL import Image

    _, _, shot, _ = page
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    counts = {lab: 0 for lab in COLOURS}
    wanted = {lab: tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for lab, c in COLOURS.items()}
    for px in img.get_flattened_data() if hasattr(img, "get_flattened_data") else img.getdata():
        for lab, rgb in wanted.items():
            if px == rgb:
                counts[lab] += 1
    assert all(n > 500 for n in counts.values()), counts  # every label's highlight is visibly painted


def test_printed_page_reads_as_the_document(page):
    _, _, _, pdf = page
    from nlp.reader import pdf_to_text

    from nlp.reader import normalize

    text = normalize(pdf_to_text(pdf)).text  # the PDF's text layer uses Kangxi radicals (⼿ for 手)
    for label in COLOURS:
        text = text.replace(label, "")
    flat = "".join(text.split())
    assert "快手二季度净利润增超七成" in flat and "经调整净利润同比增长73.7%达46.8亿元左右" in flat
    assert "Facts(" in flat
