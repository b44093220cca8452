"""The self-rewarding loop end to end on the embedded model (T=2, a few prompts, a few LoRA steps):
pipelines/self_reward_loop.yaml is an ordinary pipeline run with `prefdata run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefdata import store

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *sets):
    from prefdata.cli import main

    try:
        main(["run", str(REPO / "pipelines" / "self_reward_loop.yaml"), *[a for s in sets for a in ("--set", s)]])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code in (0, None), out.err
    return {line.split(": ")[0]: line.split(": ", 1)[1].split("  card: ")[0]
            for line in out.out.splitlines() if line.startswith("iter") and "  card: " in line}, out.err


@pytest.mark.slow
def test_loop_two_iterations_and_resume(embedded_model, capsys):
    sets = [f"engine.model={embedded_model}", "steps.generate.limit=3", "steps.generate.config.n_candidates=3",
            "steps.generate.config.max_tokens=24", "steps.generate.config.judgements=2",
            "steps.generate.config.judge_max_tokens=16", "steps.dpo.config.max_steps=2",
            "steps.dpo.config.max_length=256"]
    first, _ = run(capsys, *sets, "repeat.times=1")
    m2 = Path(first["iter1.dpo"])
    assert (m2 / "config.json").is_file() and (m2 / "README.md").is_file()
    stamp = m2.stat().st_mtime_ns
    # "Resume" with one more iteration: iteration 1 is reused, not redone.
    state, err = run(capsys, *sets, "repeat.times=2")
    assert state["iter1.generate"] == first["iter1.generate"]
    assert state["iter1.dpo"] == first["iter1.dpo"] and m2.stat().st_mtime_ns == stamp
    v2 = store.resolve(state["iter2.generate"])
    assert first["iter1.generate"] in v2.manifest["parents"]  # iterations linked in lineage
    assert v2.manifest["lineage"]["engine_config"]["model"] == str(m2)  # M_2 generated and judged
    card = json.loads((Path(state["iter2.dpo"]) / "prefdata-train.json").read_text())
    assert card["dataset"] == state["iter2.generate"] and card["config"]["model"] == str(m2)
    # The candidates table sits beside each iteration's pairs.
    assert store.resolve(f"{state['iter2.generate'].split('@')[0]}-candidates@latest")
