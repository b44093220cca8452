"""Evaluation as pipeline steps. Each reads a dataset version and writes a report folder (README.md
with the numbers, step.json with them and the lineage) under $PREFDATA_HOME/evals/<output>/.

- `eval_noise`: inject label flips into the input pairs, clean them, and measure how well the
  cleaning found them and what it does to a downstream reward head (`prefdata.curation.noise`;
  the same numbers as `prefdata eval noise`). Config: NoiseEvalConfig.
- `eval_rm_accuracy`: pairwise accuracy of a trained reward model on the input pairs: the share
  where r(prompt, chosen) > r(prompt, rejected), ties counting as wrong. `model:` is a checkpoint
  path, a hub id or `step:<a train_reward step>`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation.noise import NoiseEvalConfig, format_report, run_noise_eval
from prefdata.steps import StepResult, step


@step("eval_noise", config=NoiseEvalConfig, input="pair", output="eval")
def eval_noise(cfg: NoiseEvalConfig, table, ctx) -> StepResult:
    """Injected-flip recovery of clean_labels and its effect on a downstream reward head."""
    report = run_noise_eval(table, cfg, progress=False)
    keep = ("pairs", "injected", "roc_auc", "precision", "recall", "estimated_noise_rate", "true_noise_rate",
            "rm_heldout_accuracy")
    return StepResult(kind="eval", metrics={k: report[k] for k in keep if k in report},
                      card_sections=[("Noise evaluation", format_report(report))], lineage={"report": report})


class RMAccuracyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    needs_engine: bool = Field(False, exclude=True, description="(internal) the reward model is loaded "
                               "directly, not through an engine.")
    model: str = Field(description="Reward model: a path, a hub id, or step:<train_reward step>.")
    max_length: int = Field(512, ge=8, description="Tokens per prompt+answer; longer texts are truncated.")
    trust_remote_code: bool = False


@step("eval_rm_accuracy", config=RMAccuracyConfig, input="pair", output="eval")
def eval_rm_accuracy(cfg: RMAccuracyConfig, table, ctx) -> StepResult:
    """Pairwise accuracy of a reward model on a dataset version."""
    import datasets

    from prefdata.schema import conform
    from trainers.common import load_model_and_tokenizer
    from trainers.reward import pairwise_accuracy

    ds = datasets.Dataset(conform(table, "pair"))
    model, tok, path = load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, seq_cls=True)
    acc = pairwise_accuracy(model, tok, ds, cfg.max_length)
    n = len(ds)
    # Normal-approximation 95% interval: enough to tell a tiny eval set is tiny.
    half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n) if n else float("nan")
    md = (f"Reward model `{cfg.model}` on `{ctx.input_ref}`: pairwise accuracy **{acc:.3f}** "
          f"(± {half:.3f}, 95% normal interval) over {n} pairs; a tie counts as wrong.")
    return StepResult(kind="eval", metrics={"pairwise_accuracy": round(acc, 4), "pairs": n,
                                            "ci95_halfwidth": round(half, 4)},
                      card_sections=[("Reward model accuracy", md)],
                      lineage={"reward_model": str(path), "dataset": ctx.input_ref})
