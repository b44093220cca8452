"""Each generator YAML end to end on the real embedded SmolLM2 with two prompts and short outputs.

Asserts what a user relies on: schema-valid rows, lineage naming the templates and the model, a card
with the generator's sections, and the side tables.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefdata import store
from prefdata.pipeline import run_pipeline
from prefdata.schema import validate

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "rlcd_harmless.yaml": ["steps.rlcd.limit=2", "steps.rlcd.config.max_tokens=24", "steps.rlcd.config.max_retries=1",
                           "steps.rlcd.config.rescore=true", "steps.rlcd.config.rescore_method=logprob"],
    "rlcd_helpful.yaml": ["steps.rlcd.limit=2", "steps.rlcd.config.max_tokens=24", "steps.rlcd.config.max_retries=1"],
    "conditional.yaml": ["steps.conditional.limit=2", "steps.conditional.config.max_tokens=48",
                         "steps.conditional.config.max_retries=0"],
    "self_reward.yaml": ["steps.self_reward.limit=2", "steps.self_reward.config.n_candidates=3",
                         "steps.self_reward.config.max_tokens=24", "steps.self_reward.config.judgements=2",
                         "steps.self_reward.config.judge_max_tokens=16"],
    "bpo.yaml": ["steps.pairs.limit=2", "steps.pairs.config.max_tokens=24", "steps.construct.config.max_tokens=48",
                 "steps.construct.config.max_retries=0", "steps.rewrite.limit=2", "steps.rewrite.config.max_tokens=48",
                 "steps.evaluate.config.max_tokens=24", "steps.evaluate.config.judge_max_tokens=16"],
}
TEMPLATES = {"rlcd": {"rlcd_prompt", "rlcd_principles"}, "conditional": {"conditional", "aspect_guidelines"},
             "self_reward": {"self_reward", "rubric_judge"}, "bpo_construct": {"bpo_construct"},
             "bpo_rewrite": {"bpo_rewriter"}, "bpo_evaluate": {"pairwise_judge"}}
SECTIONS = {"rlcd": "Drop reasons", "conditional": "Directions and aspects", "self_reward": "Judge statistics",
            "bpo_construct": "BPO construction", "bpo_rewrite": "BPO rewriting", "bpo_evaluate": "| win |"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_pipeline_on_embedded_model(embedded_model, name):
    outputs = run_pipeline(REPO / "pipelines" / name, [f"engine.model={embedded_model}", *SMALL[name]])
    for step, v in outputs.items():
        man, uses = v.manifest, v.manifest["lineage"]["step"]["uses"]
        assert TEMPLATES[uses] <= set(man["lineage"]["templates"]), (step, man["lineage"]["templates"])
        assert man["lineage"]["model"].startswith(embedded_model)
        card = v.card_path.read_text()
        assert f"# {v.ref}" in card and "## Lineage" in card and SECTIONS[uses] in card, card
        assert card.count("| source | rows |") <= 1, card  # the store card's Sources table, never repeated
        table = store.load_table(v.ref)
        if man["kind"] == "pair":
            core = ("id", "prompt", "chosen", "rejected", "source", "margin", "label_prob", "flipped", "meta")
            validate(table.select([c for c in table.column_names if c in core]), "pair")  # raises if invalid
            report = man["lineage"]["report"]
            assert report["pairs"] + report["dropped"] == report["input_examples"] == 2
            if len(table):
                assert (v.path / "lengths.png").is_file()
    if name == "rlcd_harmless.yaml":
        assert "RLCD-Rescore" in outputs["rlcd"].card_path.read_text()
    if name == "self_reward.yaml":
        cands = store.load_table("self-reward-pairs-candidates@latest")
        assert cands.num_rows == 6 and {"judgements", "judge_scores", "score"} <= set(cands.column_names)
        assert all(len(j) == 2 for j in cands.column("judgements").to_pylist())
        # The candidates' rubric scores and the card's pair-score histogram: two plots, both shown.
        sr = outputs["self_reward"]
        assert (sr.path / "judge_scores.png").is_file() and "judge_scores.png" in sr.card_path.read_text()
        if len(store.load_table(sr.ref)):
            assert (sr.path / "scores.png").is_file() and "scores.png" in sr.card_path.read_text()
    if name == "bpo.yaml":
        assert {"prompt", "optimized_prompt"} <= set(store.load_table(outputs["rewrite"].ref).column_names)
        assert {"answer_original", "answer_optimized", "optimized_wins"} <= set(
            store.load_table(outputs["evaluate"].ref).column_names)
