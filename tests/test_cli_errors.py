"""Bad input through the real CLI: one-line error, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def cli(*args, home: Path, debug=False):
    env = {**os.environ, "PREFDATA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prefdata.cli"] + (["--debug"] if debug else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def assert_clean_failure(res, *needles):
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def pipeline_on(tmp_path, source) -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(yaml.safe_dump({"engine": {"backend": "transformers", "model": str(tmp_path / "no-model")},
                                 "steps": [{"name": "s", "uses": "rlcd", "input": str(source), "output": "out"}]}))
    return p


def no_datasets(home: Path):
    d = home / "datasets"
    assert not d.exists() or not any(p for p in d.rglob("manifest.json"))


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_missing_file(tmp_path, home):
    res = cli("run", str(pipeline_on(tmp_path, tmp_path / "nope.jsonl")), home=home)
    assert_clean_failure(res, "nope.jsonl")
    no_datasets(home)
    assert_clean_failure(cli("run", str(tmp_path / "missing.yaml"), home=home), "missing.yaml")


def test_unknown_ref(tmp_path, home):
    assert_clean_failure(cli("datasets", "show", "nothere@v3", home=home), "nothere")


def test_malformed_jsonl_names_line(tmp_path, home):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    res = cli("run", str(pipeline_on(tmp_path, f)), home=home)
    assert_clean_failure(res, "bad.jsonl", "2")
    no_datasets(home)


@pytest.mark.parametrize("missing", ["prompt", "chosen", "rejected"])
def test_missing_pair_field(tmp_path, home, missing):
    row = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(row) + "\n" + json.dumps({k: v for k, v in row.items() if k != missing}) + "\n")
    res = cli("run", str(pipeline_on(tmp_path, f)), home=home)
    assert_clean_failure(res, "pairs.jsonl", missing)
    no_datasets(home)


def test_empty_message_content(tmp_path, home):
    f = tmp_path / "empty.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": ""}]}) + "\n")
    res = cli("run", str(pipeline_on(tmp_path, f)), home=home)
    assert_clean_failure(res, "empty.jsonl", "content")
    no_datasets(home)


def test_invalid_utf8(tmp_path, home):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    res = cli("run", str(pipeline_on(tmp_path, f)), home=home)
    assert_clean_failure(res, "latin.jsonl", "2")
    no_datasets(home)


def test_unknown_yaml_key(tmp_path, home):
    p = tmp_path / "typo.yaml"
    p.write_text(yaml.safe_dump({"steps": [{"name": "s", "uses": "rlcd", "input": "x", "output": "o",
                                            "confg": {}}]}))
    assert_clean_failure(cli("run", str(p), home=home), "typo.yaml", "confg")


def test_unwritable_store(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}) + "\n")
    res = cli("datasets", "import", str(f), "--name", "x", home=blocker / "home")
    assert_clean_failure(res, str(blocker))


def test_debug_shows_traceback(tmp_path, home):
    res = cli("datasets", "show", "nothere@v3", home=home, debug=True)
    assert res.returncode != 0 and "Traceback" in res.stderr


@pytest.mark.parametrize("argv, says", [(["train", "dpo"], "Missing option '--dataset'"),
                                        (["run", "pipelines/quickstart.yaml", "--nope"], "No such option: --nope")])
def test_usage_errors_are_usage_lines_not_internal_errors(argv, says, tmp_path):
    # typer vendors its own click: an isinstance on click's classes alone missed these.
    r = cli(*argv, home=tmp_path)
    assert r.returncode == 2 and says in r.stderr and "internal error" not in r.stderr
