"""The main job end to end on the real embedded SmolLM2, through the CLI, with a handful of prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
    t0 = time.time()
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    t_first = time.time() - t0
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
    # Second run: nothing to regenerate, far faster (model load skipped entirely).
    t0 = time.time()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "quickstart-rlcd@v1" in again.stdout
    assert time.time() - t0 < t_first
