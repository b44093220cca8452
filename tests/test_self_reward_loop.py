"""The self-rewarding loop end to end on the embedded model (T=2, a few prompts, a few LoRA steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefdata import store

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_loop_two_iterations_and_resume(embedded_model, tmp_path):
    from trainers import self_reward_loop as loop

    sets = [f"model={embedded_model}", "limit=3", "iterations=1", f"output_dir={tmp_path / 'loop'}",
            "generate.n_candidates=3", "generate.max_tokens=24", "generate.judgements=2",
            "generate.judge_max_tokens=12", "dpo.max_steps=2", "dpo.max_length=256"]
    cfg = loop.load(REPO / "pipelines" / "self_reward_loop.yaml", sets)
    first = loop.run(cfg)
    it1 = first["iterations"]["1"]
    m2 = Path(it1["model"])
    assert (m2 / "config.json").is_file() and (m2 / "README.md").is_file()
    stamp = m2.stat().st_mtime_ns
    # "Resume" with one more iteration: iteration 1 is reused, not redone.
    state = loop.run(loop.load(REPO / "pipelines" / "self_reward_loop.yaml", sets[:2] + ["iterations=2"] + sets[3:]))
    assert state["iterations"]["1"] == it1 and m2.stat().st_mtime_ns == stamp
    it2 = state["iterations"]["2"]
    assert it2["policy"] == str(m2) and Path(it2["model"]).is_dir()
    v2 = store.resolve(it2["dataset"])
    assert it1["dataset"] in v2.manifest["parents"]  # iterations linked in lineage
    assert v2.manifest["lineage"]["policy_model"] == str(m2)
    card = json.loads((Path(it2["model"]) / "prefdata-train.json").read_text())
    assert card["dataset"] == it2["dataset"]
