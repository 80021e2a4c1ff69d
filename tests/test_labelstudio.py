"""`nlp ls` against a real Label Studio server (1.23.x from .venv-ls, started once for the session)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from nlp import labelstudio as L
from nlp.annotations import LABELS, Document, Span, load_corpus, load_documents, validate_tree
from nlp.reader import normalize, read_text

from conftest import GOLD, ROOT, SEEDS

LS_BIN = ROOT / ".venv-ls" / "bin" / "label-studio"
TOKEN = "5f2b8c1e9d0a4b7c8e6f1a2b3c4d5e6f7a8b9c0d"  # a legacy token (40 hex digits), set at first start


def cli(*argv: str) -> int:
    """Run `nlp ARGV` through the real command-line parser."""
    from nlp.cli import build_parser

    args = build_parser().parse_args(list(argv))
    return args.func(args)


def test_cli_has_the_ls_group():
    from nlp.cli import build_parser

    assert build_parser().parse_args(["ls", "config"]).func.__name__ == "cmd_config"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LS:
    url: str
    key: str

    @property
    def flags(self) -> list[str]:
        return ["--url", self.url, "--api-key", self.key]

    def client(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.key)

    def project_id(self, title: str) -> int:
        return next(p.id for p in self.client().projects.list(title=title) if p.title == title)

    def export(self, title: str, export_type: str = "JSON"):
        raw = b"".join(self.client().projects.exports.download_sync(
            self.project_id(title), export_type=export_type, download_all_tasks=True))
        return json.loads(raw) if export_type == "JSON" else raw.decode("utf-8")


def _ls_version() -> str:
    found = sorted((ROOT / ".venv-ls" / "lib").glob("python*/site-packages/label_studio-*.dist-info"))
    return found[-1].name[len("label_studio-"):-len(".dist-info")] if found else "unknown"


class _Process:
    """`label-studio start` on 127.0.0.1:`port` with its data in `data`, in a process group of its own."""

    def __init__(self, data: Path, port: int):
        self.data, self.url, self.log = data, f"http://127.0.0.1:{port}", data.parent / f"server-{port}.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("LABEL_STUDIO_")}
        env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), LABEL_STUDIO_USERNAME="nlp-test@example.com",
                   LABEL_STUDIO_PASSWORD="nlp-test-password", LABEL_STUDIO_USER_TOKEN=TOKEN,
                   LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
                   LABEL_STUDIO_LATEST_VERSION_CHECK="false", LABEL_STUDIO_COLLECT_ANALYTICS="false")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                          "--port", str(port)], cwd=data.parent, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]

    def wait_ready(self, seconds: float) -> str | None:
        """None once the API answers with the test token, else why not."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"label-studio exited with code {self.proc.returncode} while starting:\n{self.tail()}"
            try:
                req = urllib.request.Request(f"{self.url}/api/projects", headers={"Authorization": f"Token {TOKEN}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return None
            except OSError:
                pass
            time.sleep(0.5)
        return f"label-studio did not answer on {self.url} within {seconds:.0f} s:\n{self.tail()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group; SIGINT is ignored in the background
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="session")
def ls(tmp_path_factory):
    """A Label Studio server on 127.0.0.1, stopped at the end of the session.

    A fresh data dir takes 40-70 s to migrate; the first session keeps a copy of the migrated (empty) data dir
    next to pytest's temporary folders (``/tmp/pytest-of-$USER/nlp-label-studio-VERSION-...``), later sessions
    start on a copy of it in about 5-10 s."""
    if not LS_BIN.is_file():
        pytest.fail(f"{LS_BIN} not found: run scripts/setup.sh (it installs the Label Studio server, "
                    f"label-studio==1.23.*, into its own venv .venv-ls)", pytrace=False)
    root = tmp_path_factory.mktemp("label-studio")
    data = root / "data"
    template = tmp_path_factory.getbasetemp().parent / f"nlp-label-studio-{_ls_version()}-{TOKEN[:8]}"
    server = None
    if (template / "READY").is_file():
        shutil.copytree(template / "data", data)
        server = _Process(data, _free_port())
        if server.wait_ready(90) is not None:  # a broken template: start afresh
            server.stop()
            shutil.rmtree(template, ignore_errors=True)
            shutil.rmtree(data)
            server = None
    if server is None:
        data.mkdir()
        server = _Process(data, _free_port())
        problem = server.wait_ready(240)
        if problem:
            server.stop()
            pytest.fail(problem, pytrace=False)
        server.stop()  # keep the migrated data dir for the next sessions (a consistent copy needs it stopped)
        staging = Path(tempfile.mkdtemp(prefix=f"{template.name}.", dir=template.parent))
        shutil.copytree(data, staging / "data")
        (staging / "READY").write_text(f"label-studio {_ls_version()}\n", encoding="utf-8")
        try:
            os.rename(staging, template)
        except OSError:  # another session was quicker
            shutil.rmtree(staging, ignore_errors=True)
        server = _Process(data, _free_port())
        problem = server.wait_ready(120)
        if problem:
            server.stop()
            pytest.fail(problem, pytrace=False)
    try:
        yield LS(server.url, TOKEN)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real (untrained) BERT token classifier: 2 layers, hidden 32, a character vocabulary of the seeds."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    from nlp.align import TAGS

    out = tmp_path_factory.mktemp("models") / "tiny-bert"
    chars = sorted({c for p in SEEDS.glob("*.txt") for c in normalize(read_text(p)).text if not c.isspace()})
    vocab: dict[str, int] = {}
    for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(out)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=len(TAGS),
                        id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})
    torch.manual_seed(0)
    model = BertForTokenClassification(config)
    with torch.no_grad():  # mostly O, random spans of a few characters in every document
        model.classifier.weight.normal_(0.0, 0.2)
        model.classifier.bias.zero_()
        model.classifier.bias[TAGS.index("O")] = 1.5
        for t in TAGS:
            if t.startswith("I-"):
                model.classifier.bias[TAGS.index(t)] = 1.0
    model.save_pretrained(out)
    return out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------- no server

def test_config_is_generated_from_the_schema_and_valid(capsys):
    from label_studio_sdk.label_interface import LabelInterface

    assert cli("ls", "config") == 0
    out = capsys.readouterr().out
    li = LabelInterface(out)
    li.validate()
    control = li.get_control("label")
    assert control.tag == "Labels" and control.to_name == ["text"] and list(control.labels) == list(LABELS)
    assert li.get_object("text").tag == "Text" and li.get_object("text").value == "$text"
    hotkeys = re.findall(r'hotkey="([^"]+)"', out)
    colours = re.findall(r'background="(#[0-9a-f]{6})"', out)
    assert len(set(hotkeys)) == len(set(colours)) == len(LABELS)
    assert L.schema_problem(out) is None
    assert "differ from the schema" in L.schema_problem(out.replace('"PERIOD"', '"TIME"'))
    assert "not to" in L.schema_problem(out.replace('toName="text"', 'toName="doc"').replace(
        '<Text name="text"', '<Text name="doc"'))


def test_payloads_are_validated_client_side():
    li = L.label_interface(L.label_config())
    text = "快手2024年第二季度总营收约310亿元"
    good = {"id": "a", "type": "labels", "from_name": "label", "to_name": "text",
            "value": {"start": 0, "end": 2, "text": "快手", "labels": ["ENTITY"]}}
    task = {"data": {"text": text, "doc": "x.txt"}, "annotations": [{"result": [good]}],
            "predictions": [{"result": [dict(good, score=0.5)], "score": 0.5, "model_version": "m"}]}
    assert L.validate_task(task, li) == []

    def bad(**value):
        return dict(good, value=dict(good["value"], **value))

    cases = [
        ([bad(text="快")], "does not match"),
        ([bad(labels=["PERSON"])], "must be one of"),
        ([bad(end=99)], "outside the text"),
        ([good, bad(start=1, end=3, text="手2", labels=["VALUE"])], "overlap"),
        ([dict(good, to_name="txt")], "from_name/to_name"),
    ]
    for result, message in cases:
        errors = L.validate_task(dict(task, annotations=[{"result": result}]), li)
        assert errors and message in errors[0], (result, errors)
    errors = L.validate_task(dict(task, predictions=[{"result": [good], "score": 1.7}]), li)
    assert errors and "Score must be between" in errors[0]
    assert L.validate_task({"data": {"text": "", "doc": "x.txt"}}, li)


def test_annotation_choice_rule():
    def a(i, created, updated=None, **kw):
        return {"id": i, "created_at": created, "updated_at": updated or created, "result": [], **kw}

    t0, t1, t2 = "2024-01-01T00:00:00.000001Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"
    assert L.choose_annotation([a(1, t0), a(2, t1)])[0]["id"] == 2  # latest
    assert L.choose_annotation([a(1, t0, t2), a(2, t1)])[0]["id"] == 1  # updated later
    assert L.choose_annotation([a(1, t0, ground_truth=True), a(2, t2)])[0]["id"] == 1  # ground truth first
    assert L.choose_annotation([a(1, t0), a(2, t2, was_cancelled=True)])[0]["id"] == 1  # cancelled ignored
    assert L.choose_annotation([a(1, t0, was_cancelled=True)]) == (None, "the only annotation is cancelled")
    assert L.choose_annotation([]) == (None, "no annotation")


def test_character_bio_from_a_store_file(tmp_path, capsys):
    from nlp.annotations import save_documents

    text = "快手营收人民币26.9亿 元。\n增长"
    doc = Document("x.txt", text, [Span(0, 2, "ENTITY", "快手"), Span(4, 14, "VALUE", "人民币26.9亿 元")])
    save_documents(tmp_path / "x.json", [doc, Document("y.txt", "无", [])])
    out = tmp_path / "x.bio"
    assert cli("ls", "bio", "--from", str(tmp_path / "x.json"), "--out", str(out)) == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[:6] == ["快 B-ENTITY", "手 I-ENTITY", "营 O", "收 O", "人 B-VALUE", "民 I-VALUE"]
    assert "亿 I-VALUE" in lines and lines[lines.index("亿 I-VALUE") + 1] == "元 I-VALUE"  # the space is left out
    assert out.read_text(encoding="utf-8").endswith("长 O\n\n无 O\n\n")
    assert cli("ls", "bio", "--from", str(tmp_path / "x.json"), "--out", str(out)) == 2  # no --force
    assert "--force" in one_error_line(capsys.readouterr().err)


def test_unreachable_server_is_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert cli("ls", "pull", "--project", "x", "--out", str(tmp_path / "o.json"), "--url", url,
               "--api-key", "k") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot reach Label Studio at {url}" in line
    assert cli("ls", "push", str(SEEDS), "--project", "x", "--url", url, "--api-key", "k") == 2
    assert "cannot reach" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o.json").exists()


def test_missing_api_key(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert cli("ls", "pull", "--project", "x", "--out", str(tmp_path / "o.json")) == 2
    assert "no API key" in one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------- server

def test_wrong_key_is_one_line(ls, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)  # connection from the environment
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    assert cli("ls", "pull", "--project", "x", "--out", str(tmp_path / "o.json")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "rejected the API key (HTTP 401)" in line and ls.url in line


def test_push_with_predictions_least_confident_first(ls, tiny_model, capsys):
    title = "predictions"
    assert cli("ls", "push", str(SEEDS), "--project", title, "--model", str(tiny_model), *ls.flags) == 0
    out = capsys.readouterr().out
    assert "5 task(s) imported" in out and "5 prediction(s) from tiny-bert" in out
    client = ls.client()
    pid = ls.project_id(title)
    project = client.projects.get(pid)
    assert project.model_version == "tiny-bert" and project.sampling == "Uncertainty sampling"
    assert L.schema_problem(project.label_config) is None
    tasks = {t["id"]: t for t in ls.export(title)}
    preds = sorted(client.predictions.list(project=pid), key=lambda p: p.task)
    assert sorted(tasks) == [p.task for p in preds] and len(preds) == 5
    assert {t["data"]["doc"] for t in tasks.values()} == {p.name for p in SEEDS.glob("*.txt")}
    assert all(p.result for p in preds)
    for p in preds:
        text = tasks[p.task]["data"]["text"]
        assert text == read_text(SEEDS / tasks[p.task]["data"]["doc"])
        assert p.model_version == "tiny-bert" and 0 < p.score <= 1
        assert L.validate_results(p.result, text) == []  # real spans at original offsets
        assert p.score == pytest.approx(sum(r["score"] for r in p.result) / len(p.result), abs=1e-5)
    scores = [p.score for p in preds]  # in task id order
    assert scores == sorted(scores) and len(set(scores)) > 1
    req = urllib.request.Request(f"{ls.url}/api/projects/{pid}/next/", headers={"Authorization": f"Token {ls.key}"})
    with urllib.request.urlopen(req, timeout=30) as r:  # the label stream: Label Studio's uncertainty sampling
        assert json.load(r)["id"] == preds[0].task

    # pushing again imports nothing and adds no prediction
    assert cli("ls", "push", str(SEEDS), "--project", title, "--model", str(tiny_model), *ls.flags) == 0
    assert "0 task(s) imported" in capsys.readouterr().out
    assert len(client.predictions.list(project=pid)) == 5


def test_gold_round_trip_pull_and_bio(ls, tmp_path, capsys):
    title = "gold round trip"
    assert cli("ls", "push", str(GOLD), "--project", title, *ls.flags) == 0
    assert "5 task(s) imported, 5 with annotations" in capsys.readouterr().out
    out = tmp_path / "pulled" / "gold.json"
    assert cli("ls", "pull", "--project", title, "--out", str(out), *ls.flags) == 0
    assert "5 document(s)" in capsys.readouterr().out
    gold = load_corpus(GOLD)
    pulled = load_documents(out)
    assert [(d.doc, d.text, d.spans) for d in pulled] == [(d.doc, d.text, d.spans) for d in gold]
    rep = validate_tree(out.parent, SEEDS)  # the same validator as annotations/ (texts equal the seeds)
    assert rep.errors == [] and len(rep.documents) == 5

    first = out.read_bytes()
    assert cli("ls", "pull", "--project", title, "--out", str(out), *ls.flags) == 2  # exists, no --force
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert cli("ls", "pull", "--project", title, "--out", str(out), "--force", *ls.flags) == 0
    assert out.read_bytes() == first  # pulling twice gives the same file
    assert not [p for p in out.parent.iterdir() if p.name != "gold.json"]  # no temporary file left

    a, b = tmp_path / "project.bio", tmp_path / "store.bio"
    assert cli("ls", "bio", "--project", title, "--out", str(a), *ls.flags) == 0
    assert cli("ls", "bio", "--from", str(GOLD), "--out", str(b)) == 0
    bio = a.read_text(encoding="utf-8")
    assert bio == b.read_text(encoding="utf-8")
    lines = bio.split("\n")
    assert lines.count("") == 5 + 1  # a blank line after each document, and the final newline
    assert len(lines) - 6 == sum(1 for d in gold for c in d.text if not c.isspace())
    n_values = sum(1 for d in gold for s in d.spans if s.label == "VALUE")
    assert sum(1 for x in lines if x.endswith(" B-VALUE")) == n_values
    # Label Studio's own CONLL2003 export: whitespace tokens, a whole Chinese clause is one token
    conll = ls.export(title, "CONLL2003")
    assert max(len(line.split(" ")[0]) for line in conll.splitlines()) > 20


def test_several_cancelled_and_missing_annotations(ls, tmp_path, capsys):
    texts = {"a.txt": "快手二季度总营收约310亿元。", "b.txt": "腾讯第三季度净利润增长47%。",
             "c.txt": "本季度无数据。", "d.txt": "尚未标注。", "e.txt": "快手 营收 310亿元 。",
             "f.txt": "快手电商GMV增长。"}
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    title = "choices"
    assert cli("ls", "push", str(folder), "--project", title, *ls.flags) == 0
    capsys.readouterr()
    client = ls.client()
    ids = {t["data"]["doc"]: t["id"] for t in ls.export(title)}

    def span(doc, s, e, label):
        return {"id": f"{s}-{e}", "type": "labels", "from_name": "label", "to_name": "text",
                "value": {"start": s, "end": e, "text": texts[doc][s:e], "labels": [label]}}

    ann = client.annotations.create
    ann(ids["a.txt"], result=[span("a.txt", 0, 2, "ENTITY")])
    time.sleep(0.05)
    ann(ids["a.txt"], result=[span("a.txt", 0, 2, "ENTITY"), span("a.txt", 8, 14, "VALUE")])  # latest: wins
    ann(ids["b.txt"], result=[span("b.txt", 0, 2, "ENTITY")], ground_truth=True)  # ground truth: wins
    time.sleep(0.05)
    ann(ids["b.txt"], result=[span("b.txt", 2, 6, "PERIOD")])
    ann(ids["c.txt"], result=[], was_cancelled=True)  # only cancelled: skipped
    ann(ids["e.txt"], result=[span("e.txt", 0, 3, "ENTITY"), span("e.txt", 6, 12, "VALUE")])  # trailing spaces
    time.sleep(0.05)
    ann(ids["e.txt"], result=[], was_cancelled=True)  # a cancelled one after it does not count
    ann(ids["f.txt"], result=[span("f.txt", 0, 4, "ENTITY"), span("f.txt", 2, 7, "METRIC")])  # overlap

    out = tmp_path / "choices.json"
    assert cli("ls", "pull", "--project", title, "--out", str(out), *ls.flags) == 1  # one invalid task
    err = capsys.readouterr().err
    assert re.search(r"skipped: task \d+ \(c\.txt\): the only annotation is cancelled", err)
    assert re.search(r"skipped: task \d+ \(d\.txt\): no annotation", err)
    assert re.search(r"invalid: task \d+ \(f\.txt\): .*spans overlap", err)
    assert "'快手 ' trimmed to [0, 2) '快手'" in err and "Traceback" not in err
    docs = {d.doc: d for d in load_documents(out)}
    assert sorted(docs) == ["a.txt", "b.txt", "e.txt"]
    assert [(s.start, s.end, s.label) for s in docs["a.txt"].spans] == [(0, 2, "ENTITY"), (8, 14, "VALUE")]
    assert [(s.start, s.end, s.label) for s in docs["b.txt"].spans] == [(0, 2, "ENTITY")]
    assert [(s.text, s.label) for s in docs["e.txt"].spans] == [("快手", "ENTITY"), ("310亿元", "VALUE")]
    assert all(d.task_id == ids[name] for name, d in docs.items())


def test_project_with_other_labels_is_refused(ls, tmp_path, capsys):
    other = L.label_config().replace('"PERIOD"', '"PERSON"')
    ls.client().projects.create(title="other labels", label_config=other)
    before = len(ls.export("other labels"))
    assert cli("ls", "push", str(SEEDS), "--project", "other labels", *ls.flags) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "does not use the schema's labeling config" in line and "PERSON" in line
    assert len(ls.export("other labels")) == before == 0
    assert cli("ls", "pull", "--project", "other labels", "--out", str(tmp_path / "o.json"), *ls.flags) == 2
    assert "PERSON" in one_error_line(capsys.readouterr().err)
    assert cli("ls", "pull", "--project", "no such project", "--out", str(tmp_path / "o.json"), *ls.flags) == 2
    assert "no project titled 'no such project'" in one_error_line(capsys.readouterr().err)


def test_invalid_payload_is_refused_before_anything_is_sent(ls):
    server = L.Server.connect(ls.url, ls.key)
    bad = Document("bad.txt", "快手营收", [Span(0, 2, "ENTITY", "快")])  # span text does not match
    with pytest.raises(L.LabelStudioError, match="refusing to send 1 invalid item"):
        L.push(server, [], "never created", collected=([L.PushItem(bad, Path("bad.json"), True)], []))
    assert server.find_project("never created") is None
