"""Evaluation as pipeline steps. Each reads a dataset version and writes a report folder (README.md
with the numbers, step.json with them and the lineage) under $PREFDATA_HOME/evals/<output>/.

- `eval_noise`: inject label flips into the input pairs, clean them, and measure how well the
  cleaning found them and what it does to a downstream reward head (`prefdata.curation.noise`;
  the same numbers as `prefdata eval noise`). Config: NoiseEvalConfig.
- `eval_rm_accuracy`: pairwise accuracy of a trained reward model on the input pairs: the share
  where r(prompt, chosen) > r(prompt, rejected), ties counting as wrong. `model:` is a checkpoint
  path, a hub id or `step:<a train_reward step>`.
- `eval_policy`: win / tie / loss of a model's answers on the input prompts against a baseline's,
  judged in both orders, with a length-controlled win rate (`prefdata.evals.policy`; the same
  numbers as `prefdata eval policy`). The flywheel's last step: `model: step:dpo` against the base.
- `eval_ranking`: DPO implicit-reward and likelihood ranking accuracy on the input pairs, beside
  the reference model's (`prefdata.evals.ranking`; as `prefdata eval ranking`).

Models in these configs are anything an engine accepts: a path, a hub id, `name@vN` (a trained
model version) or `step:<train step>`; the baseline, judge and reference default to the pipeline's
engine model, which is the base a train step started from.
"""

from __future__ import annotations

import json
import math

from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation.noise import NoiseEvalConfig, format_report, run_noise_eval
from prefdata.evals import policy as P
from prefdata.evals import ranking as R
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


class PolicyStepConfig(P.PolicyEvalConfig):
    model: str = Field(description="The policy evaluated: path, hub id, name@vN or step:<train step>.")
    baseline: str | None = Field(None, description="What it is compared with; default: the pipeline's engine "
                                 "model (the base the train step started from).")
    judge: str | None = Field(None, description="Judge model; default: the pipeline's engine model. A judge "
                              "that is also the baseline favours its own answers; name a stronger one.")


def _override(model: str | None) -> dict:
    return {"model": model} if model else {}


@step("eval_policy", config=PolicyStepConfig, input="prompt", output="eval")
def eval_policy(cfg: PolicyStepConfig, table, ctx) -> StepResult:
    """A model's answers against a baseline's on the input prompts, judged in both orders."""
    prompts = table.column("prompt").to_pylist()
    report = P.run_policy_eval(ctx.engine(_override(cfg.model)), ctx.engine(_override(cfg.baseline)),
                               ctx.engine(_override(cfg.judge)), prompts, cfg)
    rows = report.pop("rows")
    if ctx.artifact_dir is not None:  # every answer and verdict, for a reader who doubts the number
        with open(ctx.artifact_dir / "answers.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")
    keep = ("prompts", "wins", "ties", "losses", "win_rate", "length_controlled_win_rate", "length_slope")
    return StepResult(kind="eval", metrics={k: report[k] for k in keep},
                      card_sections=[("Policy evaluation", P.format_report(report))],
                      lineage={"report": report, "dataset": ctx.input_ref})


class RankingStepConfig(R.RankingEvalConfig):
    model: str = Field(description="The trained policy: path, hub id, name@vN or step:<train step>.")
    reference: str | None = Field(None, description="Its reference model; default: the pipeline's engine model.")


@step("eval_ranking", config=RankingStepConfig, input="pair", output="eval")
def eval_ranking(cfg: RankingStepConfig, table, ctx) -> StepResult:
    """Ranking accuracy of a DPO policy on the input pairs (Chen et al. 2024)."""
    from prefdata.schema import conform

    rows = conform(table, "pair").select(["prompt", "chosen", "rejected"]).to_pylist()
    report = R.run_ranking_eval(ctx.engine(_override(cfg.model)), ctx.engine(_override(cfg.reference)), rows, cfg)
    keep = [k for k in report if k.endswith("_accuracy") or k == "pairs"]
    return StepResult(kind="eval", metrics={k: report[k] for k in keep},
                      card_sections=[("Ranking accuracy", R.format_report(report))],
                      lineage={"report": report, "dataset": ctx.input_ref})
