"""The `clean_labels` pipeline step: vote, apply policies, commit a new version with a card.

    prefdata run pipelines/clean_labels.yaml
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation import posterior as P
from prefdata.curation.card import figures_and_sections, jury_bias
from prefdata.curation.policies import PolicyConfig, apply
from prefdata.curation.texts import match_gold
from prefdata.curation.vote import combine, length_ratio
from prefdata.rewards.registry import VoterSpec
from prefdata.rewards.voters import HeadsVoter
from prefdata.schema import conform


class CleanLabelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voters: list[VoterSpec] = Field(default_factory=lambda: [HeadsVoter()],
                                    description="Reward sources; mix heads, reward_model and judge voters. Heads of "
                                    "one voter form one family; each family is one annotator in the posterior.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    length_control: bool = Field(True, description="Remove each family's linear dependence on the log length "
                                 "ratio of the answers before the posterior (see curation/vote.py).")
    length_family: bool = Field(False, description="Add the log length ratio as an annotator of its own (its "
                                "reliability estimated like any family's) beside the length-controlled families.")
    gold_column: str | None = Field(None, description="Column with 1 where the stored label is verified right, 0 "
                                    "where verified wrong, null where unknown: calibrates the posterior.")
    group_by: str | None = Field(None, description="Column naming each pair's group (source, task type, subset): "
                                 "the posterior is fitted per group, so a family may be reliable on one and reliably "
                                 "wrong on another; groups under 30 pairs are fitted together.")
    gold_file: str | None = Field(None, description="A pair file (or ref) of verified pairs, matched by prompt and "
                                  "the two answers in either order: calibrates the posterior.")

    @property
    def needs_engine(self) -> bool:
        from prefdata.rewards.registry import VOTERS

        return any(VOTERS[v.type].needs_engine for v in self.voters)


def collect_votes(table: pa.Table, cfg: CleanLabelsConfig, *, seed: int = 0, engine_for=None,
                  progress: bool = True, source: str = "clean_labels",
                  juries: list | None = None) -> dict[str, np.ndarray]:
    """Every voter's scores per pair ({voter name: (n,) array}), each voter looked up in the registry
    (`rewards.voters.VOTERS`). `juries`, when given, receives each jury voter's per-juror verdicts
    (`judges.jury.JurorVerdicts`), for the card's bias figures."""
    from prefdata.errors import DataError
    from prefdata.rewards import registry as V

    if table.num_rows == 0:  # before any model loads: nothing to vote on is a data error, not a crash
        raise DataError("the dataset has no pairs to vote on", file=source)
    ctx = V.VoteContext(seed=seed, progress=progress, source=source, engine_for=engine_for, juries=juries)
    out: dict[str, np.ndarray] = {}
    for spec in cfg.voters:
        out.update(V.vote_with(spec, table, ctx))
    return out


def answer_lengths(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Characters in the final chosen and rejected answers (vectorised)."""
    df = pl.from_arrow(table.select(["chosen", "rejected"]))
    ln = lambda c: pl.col(c).list.last().struct.field("content").cast(pl.String).fill_null("").str.len_chars()
    out = df.select(ln("chosen").alias("c"), ln("rejected").alias("r"))
    return out["c"].to_numpy(), out["r"].to_numpy()


def gold_vector(table: pa.Table, cfg: CleanLabelsConfig) -> np.ndarray | None:
    """1 / 0 / NaN per pair: the stored label is verified right / wrong / unknown."""
    from prefdata.errors import DataError

    if cfg.gold_column is not None:
        if cfg.gold_column not in table.column_names:
            raise DataError(f"gold column '{cfg.gold_column}' is not in the dataset", field=cfg.gold_column)
        g = pl.from_arrow(table.select([cfg.gold_column])).to_series().cast(pl.Float64, strict=False).to_numpy()
        bad = np.flatnonzero(np.isfinite(g) & (g != 0) & (g != 1))
        if bad.size:
            raise DataError("a gold value must be 1, 0 or empty", row=int(bad[0]) + 1, field=cfg.gold_column)
        return g.astype(np.float64)
    if cfg.gold_file is not None:
        from prefdata import io

        return match_gold(table, io.read(cfg.gold_file, "pair"))
    return None


def family_kinds(cfg: CleanLabelsConfig) -> dict[str, str]:
    """Families read from columns and how the posterior models them ("verdict" or "score")."""
    from prefdata.rewards.columns import ColumnVoter

    return {v.family: v.posterior_kind for v in cfg.voters if isinstance(v, ColumnVoter)}


def column_specs(cfg: CleanLabelsConfig) -> list:
    from prefdata.rewards.columns import ColumnVoter

    return [v for v in cfg.voters if isinstance(v, ColumnVoter)]


def vote(table: pa.Table, votes: dict[str, np.ndarray], cfg: CleanLabelsConfig, source: str = "clean_labels"):
    """The posterior for every pair of `table` from its voters' scores (see `curation.vote`)."""
    lc, lr = answer_lengths(table)
    groups = None
    if cfg.group_by is not None:
        from prefdata.errors import DataError

        if cfg.group_by not in table.column_names:
            raise DataError(f"group column '{cfg.group_by}' is not in the dataset", file=source, field=cfg.group_by)
        groups = pl.from_arrow(table.select([cfg.group_by])).to_series().cast(pl.String).fill_null("(none)").to_numpy()
    return combine(table.column("id").to_pylist(), votes, ell=length_ratio(lc, lr), length_control=cfg.length_control,
                   length_family=cfg.length_family, gold=gold_vector(table, cfg), source=source,
                   kinds=family_kinds(cfg), groups=groups)


def acting_policy(result, policy: PolicyConfig) -> PolicyConfig:
    """The policy as given when the voters can judge; otherwise one that changes and drops nothing
    (posteriors near the prior would make every cut arbitrary). Soft labels stay: they are the prior."""
    if result.posterior.can_judge:
        return policy
    return policy.model_copy(update={"flip_max_prob": None, "drop_prob_below": None, "flip_bottom_q": 0.0,
                                     "flip_below": None, "drop_abs_below": None, "drop_std_above": None,
                                     "drop_bottom_q": 0.0, "margin_from_strength": False})


def curate(table: pa.Table, cfg: CleanLabelsConfig, *, seed: int = 0, engine_for=None, votes: dict | None = None,
           source: str = "clean_labels", progress: bool = True):
    """Vote + policies. Returns (kept PAIR table, dropped PAIR table with drop_reason, Vote)."""
    votes = votes if votes is not None else collect_votes(table, cfg, seed=seed, engine_for=engine_for,
                                                          progress=progress, source=source)
    result = vote(table, votes, cfg, source)
    voter_ids = json.dumps(list(votes))
    pairs = pl.from_arrow(table)
    kept, dropped = apply(pairs, result.frame, acting_policy(result, cfg.policy), columns=column_specs(cfg))
    to_table = lambda df: conform(df.with_columns(pl.lit(voter_ids).alias("voters")).to_arrow(), "pair")
    return to_table(kept), to_table(dropped), result


def headline(result, kept: pa.Table, dropped: pa.Table) -> str:
    """The card's first line: can these voters judge, and what was done."""
    post = result.posterior
    lo, hi = post.extra.get("noise_interval", (float("nan"), float("nan")))
    import pyarrow.compute as pc

    flipped = int(pc.sum(kept.column("flipped").cast(pa.int64())).as_py() or 0) if "flipped" in kept.column_names else 0
    if not post.can_judge:
        if post.judge_problem == "one family":
            return ("Labels NOT judged: one verdict family beside the stored label cannot tell how right either "
                    "is; no label was changed. See Verdict below.")
        if post.judge_problem == "against the labels":
            return (f"Labels NOT judged: the voters call {post.noise_rate:.0%} of the labels wrong, more than a "
                    "shared bias makes believable; no label was changed. See Verdict below.")
        return (f"Labels NOT judged: the voters are near chance (they separate right from wrong labels with AUC "
                f"{P.below(post.separation)}, under the {P.JUDGE_MIN_SEPARATION} needed); the noise rate is unknown "
                "and no label was changed. See Verdict below.")
    groups = post.extra.get("groups")
    scope = (f" in {sum(g['can_judge'] for g in groups.values())} of {len(groups)} groups "
             f"({post.judged.mean():.0%} of the pairs; the rest left as they were)" if groups else "")
    return (f"Labels cleaned by {len(result.families)} voter families that can judge them{scope} (AUC "
            f"{post.separation:.2f} by the model's own account): estimated noise rate {post.noise_rate:.1%} (90% "
            f"interval {lo:.1%} – {hi:.1%}); {flipped} flipped, {dropped.num_rows} dropped.")


def run_clean_labels(cfg: CleanLabelsConfig, table: pa.Table, ctx):
    from prefdata.steps import StepResult

    table = conform(table, "pair")
    engine_for = (lambda override: ctx.engine(override)) if cfg.needs_engine else None
    juries: list = []
    votes = collect_votes(table, cfg, seed=ctx.seed, engine_for=engine_for, source=ctx.step.input, juries=juries)
    kept, dropped, result = curate(table, cfg, seed=ctx.seed, votes=votes, source=ctx.step.input)
    figures, sections = figures_and_sections(kept, dropped, result, votes, table, cfg.policy)
    lineage = {"voters": list(votes), "seeds": {"pipeline": ctx.seed}, "posterior": result.summary()}
    if juries:
        bias, jury_sections = jury_bias(juries, table, ctx.step.input)
        sections += jury_sections
        lineage["jury_bias"] = bias
    report = {"input": table.num_rows, "kept": kept.num_rows, "dropped": dropped.num_rows}
    lineage["description"] = headline(result, kept, dropped)
    return StepResult(tables={"train": kept}, kind="pair", card_sections=sections, figures=figures,
                      lineage=lineage, report=report,
                      side_tables={"dropped": ("pair", dropped)} if dropped.num_rows else {})


def register() -> None:
    # Through the leaf registry (prefdata.steps), never the pipeline: the pipeline reaches this
    # module through prefdata.catalog, so importing it back would be a cycle.
    from prefdata.steps import register_step

    register_step("clean_labels", CleanLabelsConfig, run_clean_labels, input="pair", output="pair")
