"""Versioned store: commit, refs, immutability, atomicity under SIGKILL, checksums, cards, exports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import datasets
import pytest
import yaml

from prefdata import store
from prefdata.errors import PrefdataError, RefError
from prefdata.schema import validate


def pairs(n=5, tag="a", scores=False):
    rows = []
    for i in range(n):
        r = {"prompt": [{"role": "user", "content": f"question {i}"}],
             "chosen": [{"role": "assistant", "content": f"good {tag} {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad {tag} answer {i}"}],
             "source": "test/1"}
        if scores:
            r.update(chosen_score=4.0 + i % 2, rejected_score=1.0 + i % 3, strength_mean=0.5 - i * 0.1)
        rows.append(r)
    return validate(rows, "pair")


def test_commit_resolve_latest_and_sha():
    v1 = store.commit("ds", pairs(tag="a"), lineage={"parents": ["file.jsonl"]})
    v2 = store.commit("ds", pairs(tag="b"), lineage={"parents": [v1.ref]})
    assert (v1.ref, v2.ref) == ("ds@v1", "ds@v2")
    assert store.resolve("ds@latest").ref == "ds@v2" == store.resolve("ds").ref
    assert store.resolve(f"ds@sha:{v1.sha[:8]}").ref == "ds@v1"
    assert store.resolve(str(v1.path)).ref == "ds@v1"
    assert [v.ref for v in store.list_versions("ds")] == ["ds@v1", "ds@v2"]


def test_identical_content_is_not_duplicated_and_versions_are_immutable():
    v1 = store.commit("ds", pairs())
    before = {p: p.read_bytes() for p in v1.path.rglob("*") if p.is_file()}
    assert store.commit("ds", pairs()).ref == "ds@v1"
    store.commit("ds", pairs(tag="z"))
    assert {p: p.read_bytes() for p in v1.path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("ref,msg", [("nope@v1", "unknown dataset 'nope'"), ("ds@v9", "versions of ds: v1"),
                                     ("ds@sha:ffffffff", "no version"), ("ds@x1", "malformed version"),
                                     ("bad name@v1", "malformed")])
def test_bad_refs(ref, msg):
    store.commit("ds", pairs())
    with pytest.raises(RefError, match=msg):
        store.resolve(ref)


def test_tampering_is_detected():
    v = store.commit("ds", pairs())
    f = v.data_files("train")[0]
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(PrefdataError, match="checksum mismatch"):
        store.load("ds@v1")
    v2 = store.commit("ds2", pairs())
    (v2.path / "README.md").write_text("edited")
    with pytest.raises(PrefdataError, match="README.md"):
        store.load_table("ds2@v1")


def test_a_version_is_hashed_once_per_process_until_its_files_change(monkeypatch):
    v = store.commit("ds", pairs())
    calls = []
    real = store.core.verify
    monkeypatch.setattr(store.core, "verify", lambda version, split=None: (calls.append(version.ref),
                                                                           real(version, split))[1])
    store.load_table("ds@v1")
    store.load("ds@v1")
    store.load_table(v)
    assert calls == ["ds@v1"]
    f = v.data_files("train")[0]
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(PrefdataError, match="checksum mismatch"):
        store.load_table("ds@v1")


def test_killed_commit_leaves_nothing_visible(tmp_path):
    script = textwrap.dedent("""
        import pyarrow as pa
        from prefdata import store
        from prefdata.schema import validate
        import time
        from prefdata.store import core
        real = core._fsync_files  # the last step before the rename: pause there, to be killed
        core._fsync_files = lambda tmp: (real(tmp), time.sleep(30))
        rows = [{"prompt": "q", "chosen": "good", "rejected": "bad"}]
        print("START", flush=True)
        store.commit("killme", validate(rows, "pair"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "START"
    d = store.datasets_dir() / "killme"
    deadline = time.time() + 60
    while time.time() < deadline and not any(d.glob(".tmp-*/manifest.json")):
        time.sleep(0.1)
    assert any(d.glob(".tmp-*/manifest.json")), "commit never reached its pause point"
    proc.kill()
    proc.wait()
    assert store.list_versions("killme") == []
    with pytest.raises(RefError):
        store.resolve("killme")
    v = store.commit("killme", pairs())
    assert v.ref == "killme@v1" and not list(d.glob("v2"))


def test_unwritable_store_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("PREFDATA_HOME", str(blocker / "home"))
    with pytest.raises(PrefdataError, match="not writable"):
        store.commit("ds", pairs())


def test_load_dataset_on_version_dir_and_store_load_agree():
    v = store.commit("ds", {"train": pairs(4), "test": pairs(2, tag="t")})
    ds = datasets.load_dataset(str(v.path))
    assert ds["train"].num_rows == 4 and ds["test"].num_rows == 2
    mine = store.load("ds@v1")
    assert mine["id"] == ds["train"]["id"] and mine[0]["chosen"] == [{"role": "assistant", "content": "good a 0"}]
    assert store.load("ds@v1", split="test").num_rows == 2


def test_card_has_header_counts_lineage_and_histograms():
    v = store.commit("ds", pairs(6, scores=True), lineage={"parents": ["x.jsonl"], "model": "m1",
                                                          "templates": {"t": "t-1"}, "step": {"uses": "rlcd"}},
                     command="prefdata run p.yaml", card_sections=[("Extra", "hello section")])
    card = v.card_path.read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][0]["split"] == "train" and "dataset_info" not in header
    assert "| train | 6 |" in card and "prefdata run p.yaml" in card and "hello section" in card
    assert "`x.jsonl`" in card and "m1" in card and "t-1" in card and "| test/1 | 6 |" in card
    assert (v.path / "scores.png").is_file() and (v.path / "strength.png").is_file()
    assert "![scores](scores.png)" in card
    man = json.loads((v.path / "manifest.json").read_text())
    assert set(man["files"]) >= {"README.md", "scores.png", "data/train-00000-of-00001.parquet"}


def test_no_histograms_without_scores():
    v = store.commit("ds", pairs())
    assert not list(v.path.glob("*.png"))


def test_log_diff_export(tmp_path):
    v1 = store.commit("base", pairs(4), lineage={"parents": ["prompts.jsonl"]})
    t = pairs(5, tag="a")
    v2 = store.commit("derived", t, lineage={"parents": [v1.ref]})
    chain = [(d, n if isinstance(n, str) else n.ref) for d, n in store.log(v2.ref)]
    assert chain == [(0, "derived@v1"), (1, "base@v1"), (2, "prompts.jsonl")]
    d = store.diff("base@v1", "derived@v1")
    assert d["rows"] == {"base@v1": 4, "derived@v1": 5} and len(d["added_ids"]) == 1 and not d["removed_ids"]
    out = store.export("base@v1", tmp_path / "std.jsonl", "standard")
    row = json.loads(out.read_text().splitlines()[0])
    assert row == {"prompt": "question 0", "chosen": "good a 0", "rejected": "bad a answer 0"}
    out = store.export("base@v1", tmp_path / "conv.parquet", "conversational")
    import pyarrow.parquet as pq

    conv = pq.read_table(out).to_pylist()[0]
    assert conv["prompt"] == [{"role": "user", "content": "question 0"}]
    assert conv["chosen"] == [{"role": "assistant", "content": "good a 0"}]


def test_cli_datasets_verbs(tmp_path):
    from typer.testing import CliRunner

    from prefdata.cli import _mount, app

    _mount()
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"}) for i in range(3)))
    r = CliRunner()
    res = r.invoke(app, ["datasets", "import", str(f), "--name", "imp"])
    assert res.exit_code == 0 and "imp@v1" in res.output
    assert "imp@v1" in r.invoke(app, ["datasets", "list"]).output
    assert "3 rows" in r.invoke(app, ["datasets", "show", "imp@v1"]).output
    assert "in.jsonl" in r.invoke(app, ["datasets", "log", "imp@v1"]).output
    res = r.invoke(app, ["datasets", "export", "imp@v1", "--format", "standard", "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_load_dataset_does_not_mix_up_same_named_versions(tmp_path, monkeypatch):
    """`datasets` caches local folders by base name ("v1"); two different v1s must not collide."""
    a = store.commit("one", pairs(3))
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "other-home"))
    b = store.commit("one", pairs(5, tag="other"))
    assert datasets.load_dataset(str(a.path))["train"].num_rows == 3
    assert datasets.load_dataset(str(b.path))["train"].num_rows == 5
