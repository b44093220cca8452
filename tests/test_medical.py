"""The medical RLCD example: its YAML loads, the built-in questions read, and a 2-question run on the
scripted and on the tiny model gives a version whose card opens with the not-medical-advice warning."""

from __future__ import annotations

import json
from pathlib import Path

from prefdata.generators import medical, rlcd
from prefdata.pipeline import BUILTIN_DIR, load_spec, read_input
from prefdata.prompts.rlcd import load_principles

REPO = Path(__file__).resolve().parents[1]


def test_yaml_loads_and_questions_read(tmp_path):
    spec = load_spec(REPO / "pipelines" / "medical_rlcd.yaml")
    (s,) = spec.steps
    assert s.uses == "medical_rlcd" and s.input == "builtin:medical_questions"
    cfg = medical.MedicalRLCDConfig.model_validate(s.config)
    table, ref = read_input(s.input, {}, "raise", tmp_path / "q.jsonl")
    assert ref == "builtin:medical_questions" and table.num_rows == 40
    assert len(set(table.column("id").to_pylist())) == 40
    cats = [json.loads(m)["category"] for m in table.column("meta").to_pylist()]
    assert {c: cats.count(c) for c in set(cats)} == {c: 5 for c in ("symptoms", "medication", "urgent", "chronic",
                                                                     "mental_health", "prevention", "family", "myths")}
    version, sets = load_principles(cfg.rlcd_config().principles_file)
    assert version.startswith("medical-rlcd-principles") and len(sets["medical"]) == 12
    assert set(cfg.category_sets.values()) <= set(sets)
    assert (REPO / "data_cards" / "medical_questions.md").read_text().count("Not medical advice") == 1
    assert (BUILTIN_DIR / "medical_questions.jsonl").is_file()


def test_scripted_run_card_warns(tmp_path):
    from prefdata.engines.scripted import ScriptedEngine

    class Ctx:
        seed, eng, warnings = 0, ScriptedEngine(lambda req, s: req.messages[0]["content"].split("must be ")[1]), []

        def engine(self, override=None):
            return self.eng

    table, _ = read_input("builtin:medical_questions", {}, "raise", tmp_path / "q.jsonl")
    res = medical.run_step(medical.MedicalRLCDConfig(), table.slice(0, 3), Ctx())
    assert res.card_sections[0] == ("Not medical advice", medical.NOTICE)
    assert res.lineage["description"].startswith("**Not medical advice.**")
    pairs = res.tables["train"].to_pylist()
    assert len(pairs) == 3
    metas = [json.loads(p["meta"]) for p in pairs]
    # Question 3 is an emergency: its pair comes from the medical_urgent set; the others from medical.
    assert [m["principle_set"] for m in metas] == ["medical", "medical", "medical_urgent"]
    _, sets = load_principles(str(medical.PRINCIPLES_FILE))
    for p, m in zip(pairs, metas):  # the scripted model echoes its descriptor: chosen is the positive one
        assert p["chosen"][0]["content"].startswith(sets[m["principle_set"]][m["pair_index"]][0])
    assert rlcd.RLCDConfig.model_validate(medical.MedicalRLCDConfig().rlcd_config().model_dump())


def test_two_question_run_on_tiny_model(tiny_model):
    from prefdata import store
    from prefdata.pipeline import run_pipeline

    out = run_pipeline(REPO / "pipelines" / "medical_rlcd.yaml",
                       [f"engine.model={tiny_model}", "steps.medical.limit=2", "steps.medical.config.max_tokens=8",
                        "steps.medical.config.max_retries=1"])
    v = out["medical"]
    card = v.card_path.read_text()
    head = card.split("## Rows")[0]
    assert "**Not medical advice.**" in head and "arXiv 2308.03549" in head
    assert "## Not medical advice" in card and "medical-rlcd-principles-1" in card
    assert v.manifest["lineage"]["domain"]["name"] == "medical"
    assert store.load_table(v.ref).num_rows + v.manifest["lineage"]["report"]["dropped"] == 2
