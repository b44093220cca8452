"""Review in Argilla or Label Studio (prefdata/review/interchange.py): export the queue in each tool's
import format, simulate annotators answering in the tool's export shape, import, commit, and check
the new version's flips, drops and ties; bad files name the file, record index and field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefdata import store
from prefdata.review.interchange import LS_CHOICES, import_decisions, layout
from prefdata.schema import validate
from prefdata.testing import run_cli


def _pairs() -> list[dict]:
    spec = [("p0", 0.55, [1.0, -1.0]), ("p1", 0.9, [1.0, 1.0]), ("p2", 0.5, [0.2, 0.2]),
            ("p3", 0.6, [0.5, 0.5]), ("p4", 0.55, [0.3, 0.3]), ("p5", 0.99, [2.0, 2.0])]
    return [{"id": pid, "prompt": f"question {pid}?", "chosen": f"good answer to {pid} with more words",
             "rejected": f"bad answer {pid}", "label_prob": p, "votes": v, "chosen_score": 1.0,
             "rejected_score": 0.0, "strength_mean": float(np.mean(v))} for pid, p, v in spec]


@pytest.fixture
def toy():
    return store.commit("toy", validate(_pairs(), "pair"), kind="pair")


def _side(pid: str, want: str) -> str:
    """Which shown response (response1 / response2) is the stored `want` ('chosen' or 'rejected')."""
    chosen_first = not layout(pid)
    return "response1" if (want == "chosen") == chosen_first else "response2"


# What the simulated annotators decide, on the stored label: flip p0, drop p1, tie p2, keep p3.
PLAN = {"p0": "rejected", "p1": "drop", "p2": "tie", "p3": "chosen"}


def _label(pid: str) -> str:
    d = PLAN[pid]
    return _side(pid, d) if d in ("chosen", "rejected") else d


def _check_new_version(old_ref: str):
    new = store.resolve("toy@latest")
    assert new.version == "v2" and new.manifest["parents"][0] == old_ref
    rows = {r["id"]: r for r in store.load_table(new.ref).to_pylist()}
    old = {r["id"]: r for r in store.load_table(old_ref).to_pylist()}
    assert "p1" not in rows and len(rows) == 5  # dropped
    assert rows["p0"]["flipped"] and rows["p0"]["chosen"] == old["p0"]["rejected"]  # flipped
    assert rows["p2"]["label_prob"] == 0.5 and not rows["p2"]["flipped"]  # tie
    assert rows["p3"]["chosen"] == old["p3"]["chosen"] and rows["p3"]["label_prob"] == pytest.approx(0.8)
    assert rows["p4"]["label_prob"] == pytest.approx(0.55)  # nobody answered: untouched
    s = new.manifest["lineage"]["review"]
    assert (s["labels_changed"], s["dropped"], s["ties"], s["kept"]) == (1, 1, 1, 1)
    return s


def test_argilla_round_trip_then_train_on_the_reviewed_version(toy, tmp_path, capsys, tiny_model):
    out = tmp_path / "argilla"
    code, text, err = run_cli(capsys, "review", "export", "toy@v1", "--format", "argilla", "--out", out, "--budget", 5)
    assert code == 0, err
    assert "5 pairs" in text
    recs = json.loads((out / "records.json").read_text())
    settings = json.loads((out / ".argilla" / "settings.json").read_text())
    assert json.loads((out / ".argilla" / "dataset.json").read_text())["name"] == "toy-v1-review"
    # The queue order of the review server: p2, p0, p4, p3, p1 (p5, the surest, is past the budget).
    assert [r["id"] for r in recs] == ["p2", "p0", "p4", "p3", "p1"]
    assert [f["name"] for f in settings["fields"]] == ["prompt", "response1", "response2"]
    q = settings["questions"][0]
    assert q["name"] == "preference" and q["settings"]["type"] == "label_selection"
    assert [o["value"] for o in q["settings"]["options"]] == ["response1", "response2", "tie", "drop"]
    by = {r["id"]: r for r in recs}
    for pid, r in by.items():
        chosen_shown = r["fields"][_side(pid, "chosen")]
        assert chosen_shown == f"good answer to {pid} with more words"
        assert r["fields"]["prompt"] == f"[user] question {pid}?"
    # The suggestion is the vote: p3 (label_prob 0.6) suggests the chosen side with score 0.6.
    assert by["p3"]["suggestions"]["preference"] == {"value": _side("p3", "chosen"), "score": 0.6,
                                                     "agent": "prefdata vote"}
    assert {layout(p) for p in by} == {True, False}  # both layouts occur: position says nothing

    # Annotate in Argilla's export shape (Record.to_dict): one user per record, plus a draft that must not count.
    for pid, r in by.items():
        if pid in PLAN:
            r["responses"] = {"preference": [{"value": _label(pid), "user_id": "7b1e", "status": "submitted"}]}
    by["p4"]["responses"] = {"preference": [{"value": "response1", "user_id": "7b1e", "status": "draft"}]}
    (out / "records.json").write_text(json.dumps(list(by.values())))

    code, text, err = run_cli(capsys, "review", "import", "toy@v1", out, "--format", "argilla", "--annotator", "ann")
    assert code == 0, err
    assert "4 answers" in text and "4 new decisions" in text
    r = import_decisions("toy@v1", "argilla", out / "records.json", annotator="ann")  # again: nothing new
    assert (r["written"], r["unchanged"]) == (0, 4)
    code, _, err = run_cli(capsys, "review", "commit", "toy@v1")
    assert code == 0, err
    s = _check_new_version("toy@v1")
    assert s["decisions_by_annotator"] == {"ann": 4}
    # The reviewed version is an ordinary one: a trainer takes it (the tie p2 stays at 0.5).
    code, _, err = run_cli(capsys, "train", "dpo", "--dataset", "toy@v2", "--model", tiny_model, "--output-dir",
                           tmp_path / "dpo", "--set", "max_steps=1")
    assert code == 0, err
    info = json.loads((tmp_path / "dpo" / "prefdata-train.json").read_text())
    assert info["result"]["ties"] == 1


def test_labelstudio_round_trip_with_two_annotators_and_kappa(toy, tmp_path, capsys):
    out = tmp_path / "ls" / "tasks.json"
    code, _, err = run_cli(capsys, "review", "export", "toy@v1", "--format", "labelstudio", "--out", out)
    assert code == 0, err
    tasks = json.loads(out.read_text())
    config = (tmp_path / "ls" / "tasks.json.labelconfig.xml").read_text()
    assert '<Choices name="preference" toName="prompt"' in config and "$answer1" in config
    assert len(tasks) == 6 and all(set(t["data"]) >= {"pair_id", "prompt", "answer1", "answer2"} for t in tasks)
    t3 = next(t for t in tasks if t["data"]["pair_id"] == "p3")
    pred = t3["predictions"][0]
    shown = {v: k for k, v in LS_CHOICES.items()}
    assert pred["result"][0]["value"] == {"choices": [shown[_side("p3", "chosen")]]} and pred["score"] == 0.6

    # Label Studio's JSON export: ids added, annotations with result[], completed_by; user 2 agrees
    # except on p3 (flips it), and cancels (skips) p5.
    exported = []
    for k, t in enumerate(tasks):
        pid = t["data"]["pair_id"]
        anns = []
        if pid in PLAN:
            anns.append({"id": 10 + k, "completed_by": 1, "was_cancelled": False, "result": [
                {"from_name": "preference", "to_name": "prompt", "type": "choices",
                 "value": {"choices": [shown[_label(pid)]]}}]})
            other = _side(pid, "rejected") if pid == "p3" else _label(pid)
            anns.append({"id": 50 + k, "completed_by": {"id": 2, "email": "b@x.org"}, "was_cancelled": False,
                         "result": [{"from_name": "preference", "to_name": "prompt", "type": "choices",
                                     "value": {"choices": [shown[other]]}}]})
        if pid == "p5":
            anns.append({"id": 99, "completed_by": 2, "was_cancelled": True, "result": []})
        exported.append({"id": 100 + k, **t, "annotations": anns})
    exp = tmp_path / "ls-export.json"
    exp.write_text(json.dumps(exported))
    r = import_decisions("toy@v1", "labelstudio", exp, annotator="team")
    # Several users: one name each, by email where the file gives one (user 2's skip carries only the id).
    assert r["annotators"] == ["team.1", "team.b@x.org"]
    assert r["by_decision"] == {"drop": 2, "flip": 3, "keep": 1, "skip": 1, "tie": 2}
    code, _, err = run_cli(capsys, "review", "commit", "toy@v1")
    assert code == 0, err
    new = store.resolve("toy@latest")
    rows = {r["id"]: r for r in store.load_table(new.ref).to_pylist()}
    assert "p1" not in rows and rows["p0"]["flipped"] and rows["p2"]["label_prob"] == 0.5
    assert rows["p3"]["label_prob"] == 0.5  # one keep, one flip: a tie
    assert not rows["p5"]["flipped"] and rows["p5"]["label_prob"] == pytest.approx(0.99)  # a skip is no label
    aa = new.manifest["lineage"]["review"]["annotator_agreement"]
    # team.1 and team.b@x.org on p0..p3: flip/flip, drop/drop, tie/tie, keep/flip: po = 3/4;
    # marginals team.1 (flip, drop, tie, keep: 1 each), b (flip 2, drop 1, tie 1): pe = (2+1+1+0)/16 = 1/4;
    # kappa = (3/4 - 1/4) / (3/4) = 2/3.
    assert aa["method"] == "Cohen's kappa" and aa["pairs"] == 4 and aa["kappa"] == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.parametrize("fmt,mutate,field", [
    ("argilla", lambda r: r[1]["responses"].update({"preference": [{"value": "maybe", "user_id": "u"}]}),
     "[1].responses.preference[0].value"),
    ("argilla", lambda r: r[2].update({"fields": "text"}), "[2].fields"),
    ("argilla", lambda r: r[0]["fields"].update({"response1": "edited"}) or
     r[0]["responses"].update({"preference": [{"value": "tie", "user_id": "u"}]}), "[0].fields.response1"),
    ("argilla", lambda r: r[3].update({"id": "nope", "metadata": {}}) or
     r[3]["responses"].update({"preference": [{"value": "tie", "user_id": "u"}]}), "[3].id"),
    ("labelstudio", lambda r: r[4].update({"annotations": [{"result": [{"from_name": "preference", "value": {
        "choices": ["Answer 1", "Tie"]}}]}]}), "[4].annotations[0].result.value.choices"),
    ("labelstudio", lambda r: r[2]["data"].pop("pair_id"), "[2].data.pair_id"),
])
def test_bad_files_name_the_file_record_and_field(toy, tmp_path, capsys, fmt, mutate, field):
    out = tmp_path / ("a" if fmt == "argilla" else "t.json")
    assert run_cli(capsys, "review", "export", "toy@v1", "--format", fmt, "--out", out)[0] == 0
    path = out / "records.json" if fmt == "argilla" else out
    recs = json.loads(path.read_text())
    mutate(recs)
    path.write_text(json.dumps(recs))
    code, _, err = run_cli(capsys, "review", "import", "toy@v1", path, "--format", fmt, "--annotator", "ann")
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert str(path) in line and f"field '{field}'" in line and "record " in line and "Traceback" not in err
    from prefdata.review.db import ReviewDB, db_path

    assert not db_path(toy).exists() or ReviewDB(db_path(toy)).live() == []  # nothing half-imported


def test_not_json_and_wrong_arguments(toy, tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    code, _, err = run_cli(capsys, "review", "import", "toy@v1", bad, "--format", "labelstudio", "--annotator", "a")
    assert code != 0 and str(bad) in err and "not valid JSON" in err
    code, _, err = run_cli(capsys, "review", "export", "toy@v1", "--format", "prodigy", "--out", tmp_path / "y")
    assert code != 0 and "unknown format 'prodigy'" in err
    code, _, err = run_cli(capsys, "review", "import", "toy@v1", bad, "--format", "labelstudio")
    assert code != 0 and "--annotator" in err
