"""The `clean_labels` pipeline step: vote, apply policies, commit a new version with a card.

    prefdata run pipelines/clean_labels.yaml
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation.card import figures_and_sections
from prefdata.curation.policies import PolicyConfig, apply
from prefdata.curation.vote import combine
from prefdata.rewards.voters import HeadsVoter, JudgeVoter, VoterSpec
from prefdata.schema import conform


class CleanLabelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voters: list[VoterSpec] = Field(default_factory=lambda: [HeadsVoter()],
                                    description="Reward sources; mix heads, reward_model and judge voters.")
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(flip_bottom_q=0.1))
    temperature: float | None = Field(None, gt=0, description="Fix label_prob = sigmoid(strength/T); "
                                      "default fits the slope to the dataset's own labels.")

    @property
    def needs_engine(self) -> bool:
        return any(isinstance(v, JudgeVoter) for v in self.voters)


def collect_votes(table: pa.Table, cfg: CleanLabelsConfig, *, seed: int = 0, engine_for=None,
                  progress: bool = True, source: str = "clean_labels") -> dict[str, np.ndarray]:
    from prefdata.errors import DataError
    from prefdata.rewards import voters as V

    if table.num_rows == 0:  # before any model loads: nothing to vote on is a data error, not a crash
        raise DataError("the dataset has no pairs to vote on", file=source)
    out: dict[str, np.ndarray] = {}
    for spec in cfg.voters:
        if isinstance(spec, V.HeadsVoter):
            out.update(V.heads_votes(table, spec, seed=seed, progress=progress))
        elif isinstance(spec, V.RewardModelVoter):
            out.update(V.reward_model_votes(table, spec, progress=progress))
        else:
            if engine_for is None:
                from prefdata.errors import ConfigError

                raise ConfigError("a judge voter needs an engine (run it inside a pipeline or pass engine_for)")
            out.update(V.judge_votes(table, engine_for(spec.engine)))
    return out


def curate(table: pa.Table, cfg: CleanLabelsConfig, *, seed: int = 0, engine_for=None, votes: dict | None = None,
           source: str = "clean_labels", progress: bool = True):
    """Vote + policies. Returns (kept PAIR table, dropped PAIR table with drop_reason, vote frame)."""
    votes = votes if votes is not None else collect_votes(table, cfg, seed=seed, engine_for=engine_for,
                                                          progress=progress, source=source)
    frame = combine(table.column("id").to_pylist(), votes, temperature=cfg.temperature, source=source)
    voter_ids = json.dumps(list(votes))
    pairs = pl.from_arrow(table)
    kept, dropped = apply(pairs, frame, cfg.policy)
    to_table = lambda df: conform(df.with_columns(pl.lit(voter_ids).alias("voters")).to_arrow(), "pair")  # noqa: E731
    return to_table(kept), to_table(dropped), frame


def run_clean_labels(cfg: CleanLabelsConfig, table: pa.Table, ctx):
    from prefdata.pipeline import StepResult

    table = conform(table, "pair")
    engine_for = (lambda override: ctx.engine(override)) if cfg.needs_engine else None
    votes = collect_votes(table, cfg, seed=ctx.seed, engine_for=engine_for, source=ctx.step.input)
    kept, dropped, frame = curate(table, cfg, seed=ctx.seed, votes=votes, source=ctx.step.input)
    figures, sections = figures_and_sections(kept, dropped, frame, votes, table, cfg.policy)
    report = {"input": table.num_rows, "kept": kept.num_rows, "dropped": dropped.num_rows}
    return StepResult(tables={"train": kept}, kind="pair", card_sections=sections, figures=figures,
                      lineage={"voters": list(votes), "seeds": {"pipeline": ctx.seed}}, report=report,
                      side_tables={"dropped": ("pair", dropped)} if dropped.num_rows else {})


def register() -> None:
    from prefdata.pipeline import register_step

    register_step("clean_labels", CleanLabelsConfig, run_clean_labels)
