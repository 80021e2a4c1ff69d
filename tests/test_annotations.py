"""The gold store and facts validate; every kind of corruption is caught with a precise message."""

import json
import re
import shutil

import pytest

from nlp.annotations import (AnnotationError, Document, Span, load_corpus, load_documents, parse_inline,
                             save_documents, span_agreement, validate_tree)
from nlp.cli import main

from conftest import GOLD, ROOT, SEEDS


def test_gold_tree_validates_and_covers_all_seeds():
    rep = validate_tree(ROOT / "annotations", SEEDS)
    assert rep.errors == []
    assert sorted(d.doc for d in rep.documents) == sorted(p.name for p in SEEDS.glob("*.txt"))
    for d in rep.documents:
        n_values = sum(1 for s in d.spans if s.label == "VALUE")
        assert n_values > 0 and rep.facts[d.doc] == n_values
        assert {s.label for s in d.spans} == {"ENTITY", "METRIC", "VALUE", "PERIOD"}


def test_cli_validate_prints_counts(capsys):
    assert main(["annotations", "validate"]) == 0
    out = capsys.readouterr().out
    assert "000_bf5218bb65c99514.txt" in out and "VALUE" in out and "ok: 5 documents" in out


def test_store_round_trip(tmp_path):
    for src in sorted(GOLD.glob("*.json")):
        docs = load_documents(src, SEEDS)
        dst = tmp_path / src.name
        save_documents(dst, docs)
        assert json.loads(dst.read_text(encoding="utf-8")) == json.loads(src.read_text(encoding="utf-8"))
        again = load_documents(dst)
        assert [(s.start, s.end, s.label) for s in again[0].spans] == [(s.start, s.end, s.label) for s in docs[0].spans]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "annotations"
    shutil.copytree(ROOT / "annotations", root)
    return root


def _edit(path, fn):
    obj = json.loads(path.read_text(encoding="utf-8"))
    fn(obj)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _errors(root):
    return "\n".join(validate_tree(root, SEEDS).errors)


def _first_value(obj):
    return next(i for i, r in enumerate(obj[0]["annotations"][0]["result"]) if r["value"]["labels"] == ["VALUE"])


GOLD0 = "gold/000_bf5218bb65c99514.json"
FACTS0 = "facts/000_bf5218bb65c99514.json"


def test_malformed_json_names_line(tree):
    p = tree / GOLD0
    p.write_text(p.read_text(encoding="utf-8")[:500], encoding="utf-8")
    assert "000_bf5218bb65c99514.json: line" in _errors(tree) and "malformed JSON" in _errors(tree)


def test_offset_outside_text(tree):
    def f(o):
        r = o[0]["annotations"][0]["result"][-1]["value"]
        r["start"], r["end"] = 99998, 99999
    _edit(tree / GOLD0, f)
    assert "task 0 (000_bf5218bb65c99514.txt), span" in _errors(tree) and "outside the text" in _errors(tree)


def test_text_mismatch(tree):
    _edit(tree / GOLD0, lambda o: o[0]["annotations"][0]["result"][3]["value"].update(text="错"))
    err = _errors(tree)
    assert "span 3" in err and "does not match data.text" in err


def test_unknown_label(tree):
    _edit(tree / GOLD0, lambda o: o[0]["annotations"][0]["result"][0]["value"].update(labels=["COMPANY"]))
    assert "must be one of ENTITY, METRIC, VALUE, PERIOD" in _errors(tree)


def test_overlap(tree):
    def f(o):
        res = o[0]["annotations"][0]["result"]
        v = dict(res[_first_value(o)]["value"])
        text = o[0]["data"]["text"]
        v["start"] -= 1
        v["text"] = text[v["start"]:v["end"]]
        v["labels"] = ["METRIC"]
        res.append({"id": "x", "type": "labels", "from_name": "label", "to_name": "text", "value": v})
    _edit(tree / GOLD0, f)
    assert "spans overlap" in _errors(tree)


def test_seed_text_changed(tree):
    _edit(tree / GOLD0, lambda o: o[0]["data"].update(text=o[0]["data"]["text"] + "。"))
    assert "data.text differs from" in _errors(tree)


def test_fact_value_span_not_a_value(tree):
    _edit(tree / FACTS0, lambda o: o["facts"][0].update(value_span=[0, 2]))
    err = _errors(tree)
    assert "fact 0" in err and "is not a VALUE span" in err and "has no fact" in err


def test_fact_period_form(tree):
    _edit(tree / FACTS0, lambda o: o["facts"][1].update(period="2024年Q2"))
    assert "fact 1" in _errors(tree) and "period '2024年Q2' is not an allowed form" in _errors(tree)


def test_fact_missing_field(tree):
    _edit(tree / FACTS0, lambda o: o["facts"][2].pop("unit"))
    assert "fact 2: missing field(s) unit" in _errors(tree)


def test_cli_validate_fails_with_message(tree, capsys):
    _edit(tree / FACTS0, lambda o: o["facts"][0].update(measure="growth"))
    assert main(["annotations", "validate", str(tree)]) == 1
    assert "measure 'growth' is not one of" in capsys.readouterr().err


def test_agreement_is_exact_match():
    a = [Document("d", "快手营收311亿元", [Span(0, 2, "ENTITY", "快手"), Span(4, 10, "VALUE", "311亿元")])]
    b = [Document("d", "快手营收311亿元", [Span(0, 2, "ENTITY", "快手"), Span(4, 9, "VALUE", "311亿")])]
    ag = span_agreement(a, b)
    assert ag["ENTITY"]["f1"] == 1.0 and ag["VALUE"]["f1"] == 0.0 and ag["micro"]["f1"] == 0.5


def test_double_annotation_passes_agree_well():
    first = load_corpus([ROOT / "annotations/passes/000.A.json", ROOT / "annotations/passes/001.A.json"])
    second = load_corpus([ROOT / "annotations/passes/000.B.json", ROOT / "annotations/passes/001.B.json"])
    ag = span_agreement(first, second)
    assert ag["VALUE"]["f1"] > 0.95 and ag["micro"]["f1"] > 0.9


def test_load_documents_raises_on_broken_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("", encoding="utf-8")
    with pytest.raises(AnnotationError, match="x.json: empty file"):
        load_documents(p)


def test_inline_marks_round_trip_every_gold_document():
    """Writing a gold document with inline marks and parsing it back gives the same text and spans."""
    for d in load_corpus(GOLD):
        parts, pos = [], 0
        for s in d.spans:
            parts += [d.text[pos:s.start], f"{{{{{s.label}|{s.text}}}}}"]
            pos = s.end
        parts.append(d.text[pos:])
        back = parse_inline("".join(parts), d.doc)
        assert back.text == d.text
        assert [(s.start, s.end, s.label, s.text) for s in back.spans] == \
            [(s.start, s.end, s.label, s.text) for s in d.spans]


@pytest.mark.parametrize("marked, where", [
    ("营收{{SALES|311亿元}}", "line 1, column 3: mark '{{SALES|311亿元}}'"),
    ("营收\n达{{VALUE|311亿元", "line 2, column 2: '{{' is never closed"),
    ("营收311亿元}}", "line 1, column 8: '}}' without an opening"),
    ("{{VALUE| 311亿元}}", "line 1, column 1: mark '{{VALUE| 311亿元}}': the mention is empty"),
    ("{{METRIC|营收{{VALUE|3}}}}", "line 1, column 12: '{{' inside a mark"),
])
def test_inline_marks_errors_name_line_and_column(marked, where):
    with pytest.raises(AnnotationError, match="^doc.md: " + re.escape(where)):
        parse_inline(marked, "doc.txt", where="doc.md")


def test_cli_from_inline_writes_a_valid_store(tmp_path, capsys):
    src = tmp_path / "s1.txt"
    src.write_text("{{ENTITY|星河科技}}{{PERIOD|2025年第一季度}}{{METRIC|总营收}}达{{VALUE|152.3亿元}}，"
                   "同比增长{{VALUE|12.4%}}。\n", encoding="utf-8")
    bad = tmp_path / "s2.txt"
    bad.write_text("营收{{VALUE|3亿元\n", encoding="utf-8")
    assert main(["annotations", "from-inline", str(src), str(bad), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: line 1, column 3: '{{{{' is never closed" in err
    assert not (tmp_path / "out" / "s2.json").exists()
    (doc,) = load_documents(tmp_path / "out" / "s1.json")
    assert doc.doc == "s1.txt" and doc.text.startswith("星河科技2025年第一季度总营收达152.3亿元，同比增长12.4%。")
    assert [(s.label, s.text) for s in doc.spans] == [("ENTITY", "星河科技"), ("PERIOD", "2025年第一季度"),
                                                      ("METRIC", "总营收"), ("VALUE", "152.3亿元"), ("VALUE", "12.4%")]


def test_synthetic_documents_are_training_only_and_copy_no_seed_text():
    """annotations/synthetic validates apart from the gold (no facts, not a seed) and shares no run of 20
    characters with any seed: its writers never saw the seeds, and no sentence of theirs may come from one."""
    rep = validate_tree(ROOT / "annotations", SEEDS)
    assert rep.errors == [] and len(rep.synthetic) == 28
    assert not {d.doc for d in rep.synthetic} & {d.doc for d in rep.documents}
    assert all(d.doc not in rep.facts for d in rep.synthetic)
    n = 20
    runs = {d.text[i:i + n] for d in rep.documents for i in range(len(d.text) - n + 1)}
    for d in rep.synthetic:
        copied = [d.text[i:i + n] for i in range(len(d.text) - n + 1) if d.text[i:i + n] in runs]
        assert copied == [], d.doc


def test_synthetic_store_must_equal_its_source(tree):
    src = tree / "synthetic" / "src" / "s1a.txt"
    src.write_text(src.read_text(encoding="utf-8").replace("{{VALUE|", "{{PERIOD|", 1), encoding="utf-8")
    assert "synthetic/s1a.json: differs from its source" in _errors(tree)
    src.write_text("营收{{VALUE|3亿元", encoding="utf-8")
    assert "s1a.txt: line 1, column 3: '{{' is never closed" in _errors(tree)
