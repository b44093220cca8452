"""RLCD for a medical assistant: the `rlcd` step with medical descriptor pairs and a card that says,
first, that none of this is medical advice (RLCD's quality verdict line follows the notice).

In the spirit of Zhongjing (Yang et al. 2023, arXiv 2308.03549), whose annotators ranked answers by
safety first, then professional accuracy, then fluency: the positive descriptors ask for a safe answer
that refers the person to a doctor and is honest about what cannot be known without an examination;
the negative ones for an unsafe, overconfident or dismissive one. RLCD itself (Yang et al. 2023,
arXiv 2307.12950) is unchanged: chosen = the continuation under the positive descriptor, rejected =
under the negative one, no judge. The descriptor pairs ship in `prefdata/data/medical_rlcd_principles.yaml`
(set `medical`, and `medical_urgent` for emergencies), the questions in
`prefdata/data/medical_questions.jsonl` (`input: builtin:medical_questions`).

    from prefdata.generators import medical
    pairs = medical.generate(prompts, engine, medical.MedicalRLCDConfig())
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pydantic import Field

from prefdata.engines.base import Engine
from prefdata.generators import rlcd
from prefdata.steps import step

NAME = "medical_rlcd"
PRINCIPLES_FILE = Path(__file__).resolve().parents[1] / "data" / "medical_rlcd_principles.yaml"
CITATION = ("Zhongjing (Yang et al. 2023, arXiv 2308.03549) for the safety-first priorities; RLCD (Yang et al. "
            "2023, arXiv 2307.12950) for the method")
NOTICE = ("**Not medical advice.** The answers in this dataset were written by a language model told to be "
          "safe (chosen) or unsafe (rejected) on purpose; rejected answers are unsafe by construction and chosen "
          "ones are unchecked by any clinician. Use the pairs only to train or evaluate models, never as health "
          "information for a person. Anyone with a health concern should ask a doctor; in an emergency, call the "
          "local emergency number.")


class MedicalRLCDConfig(rlcd.RLCDConfig):
    principle_set: str = Field("medical", description="Descriptor set for every question: 'medical' (12 pairs: "
                               "safe / refers to a doctor / honest about uncertainty vs unsafe / overconfident / "
                               "dismissive), or 'medical_urgent', or a set from `principles_file`.")
    principles_file: str | None = Field(None, description="YAML with `version` and `sets:` of [positive, negative] "
                                        "pairs; default the packaged medical_rlcd_principles.yaml.")
    category_sets: dict[str, str] = Field(default_factory=lambda: {"urgent": "medical_urgent"},
                                          description="Per-question set by meta.category; default: emergencies "
                                          "(category urgent) contrast calling for help now against waiting.")

    def rlcd_config(self) -> rlcd.RLCDConfig:
        """The plain RLCD config this preset runs, with the packaged descriptor file filled in."""
        return rlcd.RLCDConfig(**{**self.model_dump(), "principles_file": self.principles_file or str(PRINCIPLES_FILE)})


def generate(prompts: pa.Table, engine: Engine, config: MedicalRLCDConfig | None = None, *, seed: int = 0,
             report: dict | None = None) -> pa.Table:
    return rlcd.generate(prompts, engine, (config or MedicalRLCDConfig()).rlcd_config(), seed=seed, report=report)


@step(NAME, config=MedicalRLCDConfig, input="prompt", output="pair")
def run_step(cfg: MedicalRLCDConfig, table: pa.Table, ctx):
    """RLCD with medical descriptor pairs; the card opens with a not-medical-advice notice."""
    res = rlcd.run_step(cfg.rlcd_config(), table, ctx)
    res.card_sections.insert(0, ("Not medical advice", NOTICE))
    # The notice first, then RLCD's quality verdict line.
    res.lineage["description"] = (f"{NOTICE}\n\n{res.lineage['description']}\n\nMedical-assistant preference pairs "
                                  f"made by contrastive prompting; see {CITATION}.")
    res.lineage["domain"] = {"name": "medical", "notice": NOTICE, "citation": CITATION}
    return res
