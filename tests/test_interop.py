"""Issue 24, interop as the real tools behave: Argilla files written by the argilla 2.x SDK itself,
Label Studio's JSON_MIN export as its converter writes it, annotators named by email, TRL exports that
say what TRL does to ties and soft labels, and checkpoints refused in one line naming them.

Argilla: `rg.Dataset.from_disk` and `Dataset.to_disk` need a server, so these tests run the real SDK
against `_ArgillaStub`, a loopback HTTP server answering the few API calls they make. The stub stores
what the SDK sends and hands it back; record statuses follow the server's rule (argilla-server
`contexts/distribution.py`: a record is `completed` once `min_submitted` of its responses are submitted).
Everything prefdata reads or writes is checked by the SDK's own (de)serialisers.

Label Studio: `data/labelstudio_json_min.json` was written by label-studio-sdk 2.1.2's converter
(`Converter(config).convert_to_json_min(export, out, is_dir=False)`), the code Label Studio 1.x runs for
its JSON_MIN export, from `_ls_json_export()` below. label-studio-sdk pins numpy <2.3, which the project's
venv cannot take, so it is not a dev dependency; where it is installed, the test rebuilds the file with it
and checks it is the same.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prefdata import store
from prefdata.review.interchange import LS_CHOICES, LS_CONFIG, import_decisions, layout
from prefdata.schema import validate
from prefdata.testing import build_tiny_llama, run_cli

DATA = Path(__file__).parent / "data"
NEEDS_ARGILLA = "the argilla SDK (2.x) is not installed: pip install 'argilla>=2.8,<3' (in the dev extra)"


def _pairs() -> list[dict]:
    spec = [("p0", 0.55), ("p1", 0.9), ("p2", 0.5), ("p3", 0.6), ("p4", 0.55), ("p5", 0.99)]
    return [{"id": pid, "prompt": f"question {pid}?", "chosen": f"good answer to {pid} with more words",
             "rejected": f"bad answer {pid}", "label_prob": p} for pid, p in spec]


@pytest.fixture
def toy():
    return store.commit("toy", validate(_pairs(), "pair"), kind="pair")


def _side(pid: str, want: str) -> str:
    """Which shown response (response1 / response2) is the stored `want` ('chosen' or 'rejected')."""
    return "response1" if (want == "chosen") == (not layout(pid)) else "response2"


def _rows(ref: str) -> dict:
    return {r["id"]: r for r in store.load_table(ref).to_pylist()}


# ----------------------------------------------------------------------------- Argilla


class _ArgillaStub:
    """Just enough of Argilla's v1 REST API for `Dataset.from_disk`, `to_disk` and `records.to_list`."""

    NOW = "2025-01-01T00:00:00"

    def __init__(self):
        self.me = {"id": str(uuid.uuid4()), "username": "owner", "role": "owner", "first_name": "o",
                   "last_name": None, "inserted_at": self.NOW, "updated_at": self.NOW}
        self.ws = {"id": str(uuid.uuid4()), "name": "argilla", "inserted_at": self.NOW, "updated_at": self.NOW}
        self.datasets, self.children, self.records = {}, {}, {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                code, obj = stub.route(self.command, self.path.split("?")[0], body, self.path)
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _new(self, body: dict, **extra) -> dict:
        return {**body, "id": str(uuid.uuid4()), "inserted_at": self.NOW, "updated_at": self.NOW, **extra}

    def route(self, m: str, path: str, body, full: str):
        if path == "/api/v1/me":
            return 200, self.me
        if path == "/api/v1/me/workspaces":
            return 200, {"items": [self.ws]}
        if path == f"/api/v1/workspaces/{self.ws['id']}":
            return 200, self.ws
        if path == "/api/v1/me/datasets":
            return 200, {"items": list(self.datasets.values())}
        if m == "POST" and path == "/api/v1/datasets":
            d = self._new(body, status="draft", last_activity_at=self.NOW)
            self.datasets[d["id"]] = d
            return 201, d
        hit = re.fullmatch(r"/api/v1/(?:me/)?datasets/([^/]+)(/.*)?", path)
        if not hit or hit.group(1) not in self.datasets:
            return 404, {"detail": f"stub: {m} {path}"}
        did, rest = hit.group(1), hit.group(2) or ""
        d = self.datasets[did]
        if rest == "":
            if m == "PATCH":
                d.update(body)
            if m == "DELETE":
                self.datasets.pop(did)
            return 200, d
        if rest == "/publish":
            d["status"] = "ready"
            return 200, d
        if rest in ("/fields", "/questions", "/metadata-properties", "/vectors-settings"):
            if m == "POST":
                item = self._new(body, dataset_id=did)
                self.children.setdefault((did, rest), []).append(item)
                return 201, item
            return 200, {"items": self.children.get((did, rest), [])}
        if rest == "/records/bulk":
            items = []
            for r in body["items"]:
                rec = self._new({k: v for k, v in r.items() if k != "id"}, dataset_id=did, status="pending")
                self.records[rec["external_id"]] = rec
                items.append(rec)
            return 200, {"items": items, "updated": []}
        if rest == "/records" and m == "GET":
            q = dict(p.split("=", 1) for p in full.partition("?")[2].split("&") if "=" in p)
            recs = list(self.records.values())[int(q.get("offset", 0)):][:int(q.get("limit", 100))]
            return 200, {"items": recs, "total": len(self.records)}
        return 404, {"detail": f"stub: {m} {path}"}

    def answer(self, pair_id: str, *responses: tuple[str, str | None, str]) -> None:
        """Responses as the server stores them, (user id, value or None, status); the record's status
        as the server sets it: completed once min_submitted responses are submitted."""
        rec = self.records[pair_id]
        rec["responses"] = [{"values": None if v is None else {"preference": {"value": v}}, "status": st,
                             "user_id": u, "inserted_at": self.NOW, "updated_at": self.NOW}
                            for u, v, st in responses]
        k = self.datasets[rec["dataset_id"]]["distribution"]["min_submitted"]
        rec["status"] = "completed" if sum(st == "submitted" for _, _, st in responses) >= k else "pending"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def argilla():
    """(argilla module, a client of a fresh stub, the stub); skipped without the SDK."""
    rg = pytest.importorskip("argilla", reason=NEEDS_ARGILLA)
    stub = _ArgillaStub()
    try:
        client = rg.Argilla(api_url=stub.url, api_key="stub-key", retries=0)
        yield rg, client, stub
    finally:
        rg.Argilla._default_client = None
        stub.close()


def _export_and_load(rg, client, tmp_path, capsys):
    out = tmp_path / "review-argilla"
    code, _, err = run_cli(capsys, "review", "export", "toy@v1", "--format", "argilla", "--out", out)
    assert code == 0, err
    with pytest.warns(UserWarning, match="Workspace not provided"):
        ds = rg.Dataset.from_disk(str(out), client=client)
    return out, ds


def test_argilla_export_is_the_sdk_layout_and_from_disk_loads_it(toy, tmp_path, capsys, argilla):
    rg, client, stub = argilla
    out, ds = _export_and_load(rg, client, tmp_path, capsys)
    # The documented first step works: the dataset, its settings and every record reached the server.
    assert ds.settings.distribution.min_submitted == 1
    (d,) = stub.datasets.values()
    assert d["name"] == "toy-v1-review" and d["distribution"] == {"strategy": "overlap", "min_submitted": 1}
    assert set(stub.records) == {"p0", "p1", "p2", "p3", "p4", "p5"}
    sent = stub.records["p3"]
    assert sent["fields"]["prompt"] == "[user] question p3?" and sent["metadata"]["pair_id"] == "p3"
    assert sent["suggestions"][0]["value"] == _side("p3", "chosen") and sent["suggestions"][0]["score"] == 0.6
    # settings.json is what the SDK itself writes for these settings, key for key.
    ours = json.loads((out / ".argilla" / "settings.json").read_text())
    rg.Settings.from_json(out / ".argilla" / "settings.json").to_json(tmp_path / "sdk-settings.json")
    assert json.loads((tmp_path / "sdk-settings.json").read_text()) == ours
    # records.json is read by the SDK's own reader (Record.from_dict), suggestions included.
    from argilla.records._io._json import JsonIO

    recs = {r.id: r for r in JsonIO._records_from_json(out / "records.json")}
    assert recs["p3"].suggestions["preference"].value == _side("p3", "chosen")


def test_argilla_to_disk_answers_count_only_when_submitted(toy, tmp_path, capsys, argilla):
    rg, client, stub = argilla
    _, ds = _export_and_load(rg, client, tmp_path, capsys)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    # alice: flips p0, drops p1, ties p4, keeps p3; leaves a draft on p2 and discards p5 (with a value).
    stub.answer("p0", (alice, _side("p0", "rejected"), "submitted"))
    stub.answer("p1", (alice, "drop", "submitted"))
    stub.answer("p4", (alice, "tie", "submitted"))
    stub.answer("p3", (alice, _side("p3", "chosen"), "submitted"))
    stub.answer("p2", (alice, _side("p2", "rejected"), "draft"))
    stub.answer("p5", (alice, _side("p5", "rejected"), "discarded"))
    answers = tmp_path / "answers"
    answers.mkdir()
    ds.to_disk(str(answers))  # the SDK's own writer
    written = json.loads((answers / "records.json").read_text())
    every = [a for r in written for a in (r["responses"] or {}).get("preference", [])]
    assert len(every) == 6 and not any("status" in a for a in every)  # the SDK drops each answer's status
    assert {r["id"]: r["status"] for r in written}["p2"] == "pending"

    code, text, err = run_cli(capsys, "review", "import", "toy@v1", answers, "--format", "argilla",
                              "--annotator", "alice")
    assert code == 0, err
    assert "4 answers" in text and "2 not submitted" in text and "4 new decisions" in text
    code, _, err = run_cli(capsys, "review", "commit", "toy@v1")
    assert code == 0, err
    rows, old = _rows("toy@latest"), _rows("toy@v1")
    assert "p1" not in rows and rows["p0"]["flipped"] and rows["p4"]["label_prob"] == 0.5
    # The draft and the discarded answer are no labels: p2 and p5 keep the vote's label and label_prob.
    for pid in ("p2", "p5"):
        assert not rows[pid]["flipped"] and rows[pid]["label_prob"] == old[pid]["label_prob"]

    # A second annotator's draft on a completed record: which of the two answers was submitted is not in
    # the file. Refused in one line that names the record and the export that keeps statuses.
    stub.answer("p3", (alice, _side("p3", "chosen"), "submitted"), (bob, "tie", "draft"))
    again = tmp_path / "answers2"
    again.mkdir()
    ds.to_disk(str(again))
    code, _, err = run_cli(capsys, "review", "import", "toy@v1", again, "--format", "argilla", "--annotator", "team")
    assert code != 0 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    k = [r["id"] for r in json.loads((again / "records.json").read_text())].index("p3")
    assert str(again / "records.json") in line and f"[{k}].responses.preference[0]" in line
    assert "'completed'" in line and "to_list(flatten=True)" in line


def test_argilla_flat_export_keeps_statuses(toy, tmp_path, capsys, argilla):
    rg, client, stub = argilla
    _, ds = _export_and_load(rg, client, tmp_path, capsys)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    stub.answer("p0", (a, _side("p0", "rejected"), "submitted"), (b, _side("p0", "rejected"), "submitted"))
    stub.answer("p2", (a, "tie", "submitted"), (b, _side("p2", "chosen"), "draft"))
    stub.answer("p3", (a, _side("p3", "chosen"), "submitted"), (b, "response1", "discarded"))
    flat = tmp_path / "answers.json"
    flat.write_text(json.dumps(ds.records.to_list(flatten=True), default=str))  # the command the error names
    r = import_decisions("toy@v1", "argilla", flat, annotator="team")
    assert r["by_decision"] == {"flip": 2, "keep": 1, "skip": 1, "tie": 1} and r["not_submitted"] == 1
    assert r["annotators"] == sorted([f"team.{a}", f"team.{b}"])
    # Hugging Face datasets' JSON lines (dataset.records.to_datasets().to_json(path)) read the same.
    jl = tmp_path / "answers.jsonl"
    ds.records.to_datasets().to_json(str(jl))
    r2 = import_decisions("toy@v1", "argilla", jl, annotator="team")
    assert (r2["answers"], r2["written"], r2["not_submitted"]) == (5, 0, 1)


# ----------------------------------------------------------------------------- Label Studio

USERS = {1: {"id": 1, "email": "ann@lab.org", "first_name": "Ann", "last_name": ""},
         2: {"id": 2, "email": "bo@lab.org", "first_name": "Bo", "last_name": ""}}


def _ls_json_export(tasks: list[dict]) -> list[dict]:
    """Label Studio 1.x's JSON export of the project after two annotators: ids, timestamps and
    `completed_by` expanded to the user (the snapshot export's default). ann flips p0, drops p1, ties p2,
    keeps p3 and p5; bo flips p0, drops p1, keeps p2 and cancels (skips) p3; nobody answers p4."""
    show = {v: k for k, v in LS_CHOICES.items()}
    plan = {"p0": [(1, "rejected"), (2, "rejected")], "p1": [(1, "drop"), (2, "drop")],
            "p2": [(1, "tie"), (2, "chosen")], "p3": [(1, "chosen"), (2, None)], "p5": [(1, "chosen")]}
    out, ann_id = [], 100
    for k, t in enumerate(tasks):
        pid, anns = t["data"]["pair_id"], []
        for user, d in plan.get(pid, []):
            ann_id += 1
            label = _side(pid, d) if d in ("chosen", "rejected") else d
            anns.append({"id": ann_id, "completed_by": USERS[user], "was_cancelled": d is None,
                         "ground_truth": False, "created_at": f"2025-03-0{user}T10:00:{k:02d}.000000Z",
                         "updated_at": f"2025-03-0{user}T10:00:{k:02d}.000000Z", "lead_time": 3.5 + k,
                         "result": [] if d is None else [{"id": f"r{ann_id}", "from_name": "preference",
                                                          "to_name": "prompt", "type": "choices", "origin": "manual",
                                                          "value": {"choices": [show[label]]}}],
                         "task": k + 1, "project": 1})
        out.append({"id": k + 1, "data": t["data"], "annotations": anns, "predictions": t.get("predictions", []),
                    "meta": {}, "created_at": "2025-03-01T09:00:00Z", "updated_at": "2025-03-01T09:00:00Z",
                    "inner_id": k + 1, "total_annotations": len(anns), "cancelled_annotations": 0,
                    "total_predictions": 1, "project": 1, "updated_by": None, "file_upload": "tasks.json"})
    return out


def test_labelstudio_json_min_is_read_and_annotators_are_emails(toy, tmp_path, capsys):
    tasks_file = tmp_path / "tasks.json"
    assert run_cli(capsys, "review", "export", "toy@v1", "--format", "labelstudio", "--out", tasks_file)[0] == 0
    json_min = json.loads((DATA / "labelstudio_json_min.json").read_text())
    export = _ls_json_export(json.loads(tasks_file.read_text()))
    try:  # where label-studio-sdk is installed: the fixture is what its converter writes today
        from label_studio_sdk.converter import Converter
    except ImportError:
        Converter = None
    if Converter is not None:
        (tmp_path / "export.json").write_text(json.dumps(export))
        Converter(LS_CONFIG, project_dir=str(tmp_path), download_resources=False).convert_to_json_min(
            str(tmp_path / "export.json"), str(tmp_path / "min"), is_dir=False)
        assert json.loads((tmp_path / "min" / "result.json").read_text()) == json_min
    # The fixture is the flat JSON_MIN layout, one row per annotation, the skip left out.
    assert all("data" not in r and {"pair_id", "annotator", "annotation_id"} <= set(r) for r in json_min)
    assert len(json_min) == 9 - 1 + 1  # 9 annotations, bo's skip not in it, p4 a row without one

    path = tmp_path / "project-min.json"
    path.write_text(json.dumps(json_min))
    code, text, err = run_cli(capsys, "review", "import", "toy@v1", path, "--format", "labelstudio",
                              "--annotator", "team")
    assert code == 0, err
    assert "8 answers" in text and "annotators: team.ann@lab.org, team.bo@lab.org" in text
    code, _, err = run_cli(capsys, "review", "commit", "toy@v1")
    assert code == 0, err
    rows = _rows("toy@latest")
    assert "p1" not in rows and rows["p0"]["flipped"] and rows["p2"]["label_prob"] == 0.5  # tie vs keep
    aa = store.resolve("toy@latest").manifest["lineage"]["review"]["annotator_agreement"]
    assert aa["pairs"] == 3  # p0, p1, p2 answered by both (bo skipped p3)

    # The JSON export of the same project reads the same, by the same names.
    (tmp_path / "project.json").write_text(json.dumps(export))
    r = import_decisions("toy@v1", "labelstudio", tmp_path / "project.json", annotator="team")
    assert r["annotators"] == ["team.ann@lab.org", "team.bo@lab.org"] and r["by_decision"]["skip"] == 1


def test_labelstudio_ids_take_the_email_the_file_gives_and_odd_rows_say_use_json(toy, tmp_path, capsys):
    tasks_file = tmp_path / "tasks.json"
    assert run_cli(capsys, "review", "export", "toy@v1", "--format", "labelstudio", "--out", tasks_file)[0] == 0
    export = _ls_json_export(json.loads(tasks_file.read_text()))
    # The default (non-snapshot) export gives completed_by as the numeric id; one expanded answer is
    # enough to name user 2 by email everywhere. User 1 is never expanded: named by id.
    for t in export:
        for a in t["annotations"]:
            a["completed_by"] = a["completed_by"]["id"]
    export[0]["annotations"][1]["completed_by"] = USERS[2]
    (tmp_path / "p.json").write_text(json.dumps(export))
    r = import_decisions("toy@v1", "labelstudio", tmp_path / "p.json", annotator="team")
    assert r["annotators"] == ["team.1", "team.bo@lab.org"]

    # A row that is neither a JSON task nor a JSON_MIN row: one line saying which export to use.
    (tmp_path / "csvish.json").write_text(json.dumps([{"prompt": "x", "preference": "Tie"}]))
    code, _, err = run_cli(capsys, "review", "import", "toy@v1", tmp_path / "csvish.json", "--format",
                           "labelstudio", "--annotator", "team")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Export -> JSON" in err
    # A JSON_MIN row whose choice is not one of ours names the row and the field.
    bad = json.loads((DATA / "labelstudio_json_min.json").read_text())
    bad[1]["preference"] = ["Answer 1", "Tie"]
    (tmp_path / "bad-min.json").write_text(json.dumps(bad))
    code, _, err = run_cli(capsys, "review", "import", "toy@v1", tmp_path / "bad-min.json", "--format",
                           "labelstudio", "--annotator", "team")
    assert code != 0 and "field '[1].preference'" in err and "record 1" in err


# ----------------------------------------------------------------------------- TRL


@pytest.fixture
def soft():
    rows = [{"id": f"s{i}", "prompt": f"q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}", "label_prob": p,
             "margin": m} for i, (p, m) in enumerate([(0.5, 0.0), (0.5, 0.0), (0.6, 0.2), (0.8, 1.0), (1.0, 0.0)])]
    return store.commit("soft", validate(rows, "pair"), kind="pair")


def test_trl_export_warns_about_ties_and_dropped_columns_and_hints_max_length(soft, tmp_path, capsys):
    out = tmp_path / "std.jsonl"
    code, _, err = run_cli(capsys, "datasets", "export", "soft@v1", "--format", "standard", "--out", out)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 5  # nothing left out unless asked
    assert "warning: 2 tied pair(s)" in err and "--drop-ties" in err
    assert "label_prob and margin are not in TRL's standard format" in err and "2 with a non-zero margin" in err
    assert "RewardTrainer drops" in err and "max_length" in err
    # Our own schema keeps both columns: no warning, no hint.
    code, _, err = run_cli(capsys, "datasets", "export", "soft@v1", "--format", "jsonl", "--out", tmp_path / "f.jsonl")
    assert code == 0 and "warning" not in err and "hint" not in err


def test_trl_export_drop_ties_and_min_label_prob(soft, tmp_path, capsys):
    out = tmp_path / "conv.jsonl"
    code, text, err = run_cli(capsys, "datasets", "export", "soft@v1", "--format", "conversational", "--out", out,
                              "--drop-ties")
    assert code == 0, err
    assert "3 of 5 pairs: 2 ties and 0 below --min-label-prob left out" in text and "tied" not in err
    assert [json.loads(x)["chosen"][0]["content"] for x in out.read_text().splitlines()] == ["good 2", "good 3",
                                                                                            "good 4"]
    code, text, err = run_cli(capsys, "datasets", "export", "soft@v1", "--format", "standard", "--out", out,
                              "--min-label-prob", "0.7")
    assert code == 0, err
    assert [json.loads(x)["chosen"] for x in out.read_text().splitlines()] == ["good 3", "good 4"]
    assert "2 of 5 pairs" in text
    code, _, err = run_cli(capsys, "datasets", "export", "soft@v1", "--format", "standard", "--out", out,
                           "--min-label-prob", "1.5")
    assert code != 0 and "--min-label-prob 1.5" in err
    # From Python: the same filter over a version's table, for a datasets.Dataset handed to TRL.
    kept, counts = store.label_filter(store.load_table("soft@v1"), drop_ties=True)
    assert kept.num_rows == 3 and counts["ties_dropped"] == 2


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """A tiny Llama whose weights are a pickle naming a global torch's safe loader refuses, and one whose
    config maps to modeling code shipped beside it."""
    import shutil

    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("checkpoints")
    base = build_tiny_llama(root / "base")
    pickled = root / "pickled"
    shutil.copytree(base, pickled)
    (pickled / "model.safetensors").unlink()
    state = dict(load_file(base / "model.safetensors"))
    state["_extra"] = threading.Lock  # any global outside torch's allowlist
    torch.save(state, pickled / "pytorch_model.bin")
    remote = root / "remote"
    shutil.copytree(base, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="myllama", architectures=["MyLlama"],
               auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyLlama"})
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "configuration_my.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass MyConfig(LlamaConfig):\n    model_type = 'myllama'\n")
    (remote / "modeling_my.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_my import MyConfig\n\n\n"
        "class MyLlama(LlamaForCausalLM):\n    config_class = MyConfig\n")
    return pickled, remote


@pytest.mark.parametrize("which,says", [("pickled", "pickle weights"), ("remote", "trust_remote_code")])
def test_refused_checkpoint_is_one_line_naming_it(bad_checkpoints, tmp_path, capsys, which, says):
    store.commit("tiny", validate([{"id": f"p{i}", "prompt": f"q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}
                                   for i in range(4)], "pair"), kind="pair")
    ckpt = dict(zip(("pickled", "remote"), bad_checkpoints))[which]
    code, _, err = run_cli(capsys, "train", "dpo", "--dataset", "tiny@v1", "--model", ckpt, "--output-dir",
                           tmp_path / "out", "--set", "max_steps=1")
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(ckpt) in line and says in line
    assert "internal error" not in err and "report it" not in err and "\x1b" not in err and "Traceback" not in err
