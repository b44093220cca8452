"""One reward per (prompt, answer): the per-candidate counterpart of the pairwise voters.

The curation voters (`voters.py`) return r(chosen) - r(rejected) per pair; a rejection sampler needs
r(answer) for each candidate on its own. Each reward source the voters accept has a function here:

- `reward_model`: any 1-output sequence-classification checkpoint (an HF reward model, or one trained
  by `prefdata train reward` / a `train_reward` step, named `step:<train step>` in a pipeline);
  the same spec and scorer as the voter (`reward_model.py`). A model trained with `whiten: true` has its
  rewards whitened with the mean and std saved beside it (`trainers.reward_norm`);
- `judge`: the additive 5-point rubric judge (`judges.pointwise`, Yuan et al. 2024), either parsed
  from k generated judgements (mean of the parseable ones; null when none) or, with
  `method: logprob`, the expected score under the judge's next-token distribution over "0".."5"
  after a forced "Score: " (never unparseable; needs an engine with log-likelihoods).

`heads` and `finetuned_rm` are not here on purpose: both train on the very pairs they vote on, and
candidates have no labels yet. Train a reward model first and score with `reward_model`.

    from prefdata.rewards import score
    r = score.reward_model_scores(prompts, answers, RewardModelVoter(model="path/to/rm"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from prefdata.engines.base import Engine
from prefdata.errors import PrefdataError
from prefdata.rewards.reward_model import RewardModelVoter
from prefdata.rewards.voters import JudgeVoter

Messages = list[dict]


class JudgeScorer(JudgeVoter):
    """The judge voter's spec (engine overrides) plus how the pointwise judge answers: the one judge
    scorer config, rejection sampling's `reward: {type: judge}` and self_reward's `judge:` (there with
    the paper's defaults, `generators.self_reward.SelfRewardJudge`)."""

    method: Literal["generate", "logprob"] = Field(
        "generate", description="generate: k sampled judgements, 'Score: n' parsed strictly, mean of the "
        "parseable ones (Yuan et al. 2024, arXiv 2401.10020). logprob: the expected score sum_s s*p(s) over "
        "s in 0..5 after a forced 'Score: ' prefix; continuous and never unparseable, transformers/vllm only.")
    k: int = Field(1, ge=1, le=16, description="generate: judgements per answer, in [1, 16]; the paper uses 3.")
    temperature: float = Field(0.0, ge=0, le=2, description="generate: judge sampling temperature, in [0, 2]; "
                               "0 is one deterministic judgement (use > 0 with k > 1).")
    max_tokens: int = Field(160, ge=4, le=4096, description="generate: new tokens per judgement; the score line "
                            "must fit (score_first needs only a few).")
    score_first: bool = Field(True, description="generate: ask for 'Score: n' first (assistant prefix) instead of "
                              "after a justification; far fewer unparseable judgements from small models.")


ScorerSpec = Annotated[RewardModelVoter | JudgeScorer, Field(discriminator="type")]


@dataclass
class Scores:
    """Rewards for a list of answers, with the judge's evidence when a judge gave them."""

    name: str  # what scored them, e.g. rm:<model> or judge:<model>
    values: np.ndarray  # (n,) float, NaN where no score could be given
    judgements: list[list[str]] = field(default_factory=list)  # raw judge texts per answer (judge only)
    judge_scores: list[list[float | None]] = field(default_factory=list)
    template: str | None = None  # the judge prompt's template version, for lineage


def reward_model_scores(prompts: list[Messages], answers: list[str], spec: RewardModelVoter,
                        progress: bool = True) -> np.ndarray:
    """r(prompt, answer) from a scalar reward model: the voter's scorer (`reward_model.py`) on each
    prompt followed by the answer as one assistant turn; whitened when the model was."""
    from prefdata.rewards.reward_model import conversation_rewards

    convs = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]
    return conversation_rewards(spec, [convs], unit="answers", progress=progress)[0]


def rubric_judge(spec: JudgeScorer):
    """The pointwise judge (`judges.pointwise.RubricJudge`) a judge scorer runs: logprob forces 'Score: '."""
    from prefdata.judges import pointwise

    return pointwise.RubricJudge(k=spec.k, temperature=spec.temperature, max_tokens=spec.max_tokens,
                                 score_first=spec.score_first or spec.method == "logprob")


def judge_template(spec: JudgeScorer) -> str:
    """The judge prompt's template version as `Scores.template` and lineage record it."""
    return rubric_judge(spec).template_version + ("+logprob" if spec.method == "logprob" else "")


def judge_scores(prompts: list[Messages], answers: list[str], spec: JudgeScorer, engine: Engine,
                 seed: int = 0) -> Scores:
    """Pointwise rubric scores in [0, 5]; NaN where no judgement parsed (generate method)."""
    judge = rubric_judge(spec)
    name = f"judge:{engine.model_id}"
    if spec.method == "generate":
        raws, parsed, means = judge.judge(engine, prompts, answers, seed=seed)
        values = np.array([np.nan if m is None else m for m in means], dtype=float)
        return Scores(name, values, raws, parsed, judge_template(spec))
    reqs = judge.requests(prompts, answers)
    digits = [str(s) for s in range(6)]
    # (n, 6) log p("s" | ..., "Score: "), in one call: the six one-token continuations of a request
    # share its forward pass (transformers engine), and each is cached on its own.
    lp = np.asarray(engine.score([r for r in reqs for _ in digits], digits * len(reqs)), dtype=float)
    lp = lp.reshape(len(reqs), len(digits))
    p = np.exp(lp - lp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    values = p @ np.arange(6.0)
    return Scores(name + ":logprob", values, [[] for _ in answers], [[] for _ in answers], judge_template(spec))


def score(prompts: list[Messages], answers: list[str], spec, *, engine_for: Callable | None = None,
          seed: int = 0, progress: bool = True) -> Scores:
    """Dispatch on the spec: a reward model, a judge (through `engine_for(spec.engine)`), or a plain
    callable `(prompts, answers) -> rewards` (Python API: a rule, a verifier, a toy reward)."""
    if callable(spec) and not isinstance(spec, (RewardModelVoter, JudgeScorer)):
        values = np.asarray(spec(prompts, answers), dtype=float)
        if values.shape != (len(answers),):
            raise PrefdataError(f"reward function returned shape {values.shape}, expected ({len(answers)},)")
        return Scores(getattr(spec, "__name__", "reward_fn"), values, [[] for _ in answers], [[] for _ in answers])
    if isinstance(spec, RewardModelVoter):
        return Scores(f"rm:{spec.model}", reward_model_scores(prompts, answers, spec, progress=progress),
                      [[] for _ in answers], [[] for _ in answers])
    if engine_for is None:
        raise PrefdataError("a judge scorer needs an engine (run it in a pipeline or pass engine_for)")
    return judge_scores(prompts, answers, spec, engine_for(spec.engine), seed=seed)
