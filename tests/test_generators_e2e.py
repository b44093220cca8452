"""Each generator YAML end to end on the real embedded SmolLM2 with a couple of prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefdata import store
from prefdata.pipeline import run_pipeline
from prefdata.schema import validate

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "rlcd_harmless.yaml": ["steps.rlcd.limit=2", "steps.rlcd.config.max_tokens=24", "steps.rlcd.config.max_retries=1"],
    "rlcd_helpful.yaml": ["steps.rlcd.limit=2", "steps.rlcd.config.max_tokens=24", "steps.rlcd.config.max_retries=1"],
    "conditional.yaml": ["steps.conditional.limit=2", "steps.conditional.config.max_tokens=64",
                         "steps.conditional.config.max_retries=0"],
    "self_reward.yaml": ["steps.self_reward.limit=2", "steps.self_reward.config.n_candidates=2",
                         "steps.self_reward.config.max_tokens=24", "steps.self_reward.config.judgements=2",
                         "steps.self_reward.config.judge_max_tokens=12"],
    "bpo.yaml": ["steps.pairs.limit=2", "steps.pairs.config.max_tokens=24", "steps.construct.config.max_tokens=64",
                 "steps.construct.config.max_retries=0", "steps.rewrite.limit=2", "steps.rewrite.config.max_tokens=48",
                 "steps.evaluate.config.max_tokens=24"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_pipeline_on_embedded_model(embedded_model, name):
    outputs = run_pipeline(REPO / "pipelines" / name, [f"engine.model={embedded_model}", *SMALL[name]])
    for step, v in outputs.items():
        man = v.manifest
        assert man["lineage"]["templates"], (step, man["lineage"])
        assert man["lineage"]["model"].startswith(embedded_model)
        card = v.card_path.read_text()
        assert f"# {v.ref}" in card and "## Lineage" in card
        table = store.load_table(v.ref)
        if man["kind"] == "pair":
            core = ("id", "prompt", "chosen", "rejected", "source", "margin", "meta")
            validate(table.select([c for c in table.column_names if c in core]), "pair")  # raises if invalid
            report = man["lineage"]["report"]
            assert report["pairs"] + report["dropped"] == report["input_examples"]
    if name == "self_reward.yaml":
        cands = store.load_table("self-reward-pairs-candidates@latest")
        assert cands.num_rows == 4 and "judgements" in cands.column_names
        assert "Judge statistics" in outputs["self_reward"].card_path.read_text()
    if name == "bpo.yaml":
        assert "win" in outputs["evaluate"].card_path.read_text()
