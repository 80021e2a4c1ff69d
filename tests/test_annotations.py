"""The gold store and facts validate; every kind of corruption is caught with a precise message."""

import json
import shutil

import pytest

from nlp.annotations import (AnnotationError, Document, Span, load_corpus, load_documents, save_documents,
                             span_agreement, validate_tree)
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
