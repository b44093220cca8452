"""The main job end to end on the real embedded SmolLM2, through the CLI, with a handful of prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_cli_on_embedded_model(embedded_model, tmp_path):
    env = {**os.environ, "PREFDATA_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "prefdata.cli", "run", str(REPO / "pipelines" / "quickstart.yaml"),
           "--set", f"engine.model={embedded_model}", "--set", "steps.rlcd.limit=4",
           "--set", "steps.rlcd.config.max_tokens=32"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "quickstart-rlcd@v1" in first.stdout and "README.md" in first.stdout
    vdir = tmp_path / "home" / "datasets" / "quickstart-rlcd" / "v1"
    ds = datasets.load_dataset(str(vdir))["train"]
    assert 1 <= ds.num_rows <= 4
    for row in ds:
        assert row["chosen"][0]["content"].strip() and row["rejected"][0]["content"].strip()
        assert row["chosen"] != row["rejected"]
        meta = json.loads(row["meta"])
        assert meta["principle_set"] in ("harmless", "helpful")
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["lineage"]["model"].startswith(embedded_model)
    asked = manifest["lineage"]["engine_usage"].get("requests", 0)
    assert asked > 0
    from prefdata.engines.cache import RequestCache

    cache = tmp_path / "home" / "cache" / "requests.sqlite"
    cached = len(RequestCache(cache))
    assert cached >= asked  # every sample the engine produced is in the request cache
    # Second run, same spec: the committed step is found by its fingerprint and skipped.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "quickstart-rlcd@v1" in again.stdout
    assert "rlcd: already committed as quickstart-rlcd@v1" in again.stderr
    # Third run on a prefix of the prompts: a new fingerprint, so the step runs, but every request is
    # a cache hit: the engine is asked for nothing and the cache gains nothing.
    third = subprocess.run([*cmd, "--set", "steps.rlcd.limit=3"], env=env, capture_output=True, text=True,
                           timeout=900)
    assert third.returncode == 0, third.stderr[-2000:]
    v2 = json.loads((vdir.parent / "v2" / "manifest.json").read_text())
    assert v2["lineage"]["engine_usage"].get("requests", 0) == 0
    assert len(RequestCache(cache)) == cached
