"""Label policies over voted pairs: flip, drop, soft labels and adaptive margins.

Secrets of RLHF II (arXiv 2401.06080) finds the lowest-strength ~20% of HH pairs are mostly wrong
labels (flip them) and the next band near chance (soften or drop them); PrefCleanBench
(arXiv 2509.23564) finds dropping pairs several judges flag often beats flipping. Every decision is
written on the pair (`flipped`, and a `drop_reason` in the dropped table), so it can be undone.
All of it is polars expressions: no Python loop over pairs.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flip_bottom_q: float = Field(0.0, ge=0.0, lt=1.0, description="Flip the lowest-strength fraction q of pairs "
                                 "(Secrets II flips the bottom 10-20%); only pairs with negative strength are flipped.")
    flip_below: float | None = Field(None, ge=0.0, description="Flip pairs with strength_mean < -t (vote units).")
    drop_abs_below: float | None = Field(None, ge=0.0, description="Drop ambiguous pairs with |strength_mean| < x.")
    drop_std_above: float | None = Field(None, gt=0.0, description="Drop pairs whose voters disagree: strength_std > y.")
    drop_bottom_q: float = Field(0.0, ge=0.0, lt=1.0, description="Drop the lowest-strength fraction q instead of "
                                 "flipping it (PrefCleanBench's preferred remedy).")
    soft_label: bool = Field(True, description="Keep the vote's label_prob for soft-label losses; false sets 1.0.")
    margin_from_strength: bool = Field(False, description="Adaptive margin (Secrets II): margin = scale * max(strength, 0).")
    margin_scale: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _no_double_booking(self):
        if self.flip_bottom_q and self.drop_bottom_q and self.flip_bottom_q + self.drop_bottom_q >= 1:
            raise ValueError("flip_bottom_q + drop_bottom_q must be < 1")
        return self


def _quantile_cut(q: float) -> pl.Expr:
    return pl.col("strength_mean").quantile(q, interpolation="lower") if q > 0 else pl.lit(float("-inf"))


def apply(pairs: pl.DataFrame, votes: pl.DataFrame, cfg: PolicyConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (kept pairs with vote columns, dropped pairs with `drop_reason`)."""
    vote_cols = ["votes", "strength_mean", "strength_std", "label_prob"]
    df = pairs.drop([c for c in vote_cols if c in pairs.columns]).join(
        votes.select(["id", *vote_cols, *(c for c in votes.columns if c in ("agreement",))]), on="id", how="left")

    # Drop decisions first, all from the same strength the flips use.
    reasons = []
    if cfg.drop_bottom_q > 0:
        reasons.append(pl.when(pl.col("strength_mean") <= _quantile_cut(cfg.drop_bottom_q))
                       .then(pl.lit(f"low strength: bottom {cfg.drop_bottom_q:.0%}")))
    if cfg.drop_abs_below is not None:
        reasons.append(pl.when(pl.col("strength_mean").abs() < cfg.drop_abs_below)
                       .then(pl.lit(f"ambiguous: |strength| < {cfg.drop_abs_below}")))
    if cfg.drop_std_above is not None:
        reasons.append(pl.when(pl.col("strength_std") > cfg.drop_std_above)
                       .then(pl.lit(f"disagreement: std > {cfg.drop_std_above}")))
    df = df.with_columns(pl.coalesce(reasons).alias("drop_reason") if reasons else pl.lit(None, pl.String).alias("drop_reason"))

    flip = pl.lit(False)
    if cfg.flip_bottom_q > 0:
        flip = flip | ((pl.col("strength_mean") <= _quantile_cut(cfg.flip_bottom_q)) & (pl.col("strength_mean") < 0))
    if cfg.flip_below is not None:
        flip = flip | (pl.col("strength_mean") < -cfg.flip_below)
    # Quantiles are taken over all pairs (before dropping), so a pair's fate does not depend on
    # which other pairs happened to be dropped.
    df = df.with_columns((flip & pl.col("drop_reason").is_null()).alias("_flip"))
    swap = lambda a, b: pl.when(pl.col("_flip")).then(pl.col(b)).otherwise(pl.col(a))  # noqa: E731
    df = df.with_columns(
        swap("chosen", "rejected").alias("chosen"),
        swap("rejected", "chosen").alias("rejected"),
        swap("chosen_score", "rejected_score").alias("chosen_score"),
        swap("rejected_score", "chosen_score").alias("rejected_score"),
        pl.when(pl.col("_flip")).then(pl.col("votes").list.eval(-pl.element())).otherwise(pl.col("votes")).alias("votes"),
        pl.when(pl.col("_flip")).then(-pl.col("strength_mean")).otherwise(pl.col("strength_mean")).alias("strength_mean"),
        pl.when(pl.col("_flip")).then(1.0 - pl.col("label_prob")).otherwise(pl.col("label_prob")).alias("label_prob"),
        (pl.col("flipped").fill_null(False) ^ pl.col("_flip")).alias("flipped"),
    )
    if not cfg.soft_label:
        df = df.with_columns(pl.lit(1.0).alias("label_prob"))
    if cfg.margin_from_strength:
        df = df.with_columns((cfg.margin_scale * pl.col("strength_mean").clip(lower_bound=0.0)).alias("margin"))
    kept = df.filter(pl.col("drop_reason").is_null()).drop(["drop_reason", "_flip"])
    dropped = df.filter(pl.col("drop_reason").is_not_null()).drop("_flip")
    return kept, dropped
