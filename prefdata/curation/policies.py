"""Label policies over voted pairs: flip, drop, soft labels and adaptive margins.

The defaults act on the posterior (`label_prob`, see `vote.py`) and abstain unless confident: a label
is flipped only when the posterior that it is right is at most `flip_max_prob` (0.1), and every other
pair keeps its label with the posterior as its soft label. A strength quantile, by contrast, flips a
fixed share of every dataset however clean it is; those rules remain as options.

Secrets of RLHF II (arXiv 2401.06080) finds the lowest-strength ~20% of HH pairs are mostly wrong
labels (flip them) and the next band near chance (soften or drop them); PrefCleanBench
(arXiv 2509.23564) finds dropping pairs several judges flag often beats flipping. Every decision is
written on the pair (`flipped`, and a `drop_reason` in the dropped table), so it can be undone:
`flip(df, mask)` twice with the same mask is the identity.
All of it is polars expressions: no Python loop over pairs.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flip_max_prob: float | None = Field(0.1, ge=0.0, lt=0.5, description="Flip pairs whose posterior that the "
                                        "stored label is right is <= p (confidently wrong); null disables.")
    drop_prob_below: float | None = Field(None, gt=0.0, le=1.0, description="Drop the ambiguous band: pairs "
                                          "(not flipped) whose posterior is < p, e.g. 0.5. Null keeps them, softened.")
    flip_bottom_q: float = Field(0.0, ge=0.0, lt=1.0, description="Flip the lowest-strength fraction q of pairs "
                                 "(Secrets II flips the bottom 10-20%); only pairs with negative strength are flipped.")
    flip_below: float | None = Field(None, ge=0.0, description="Flip pairs with strength_mean < -t (vote units).")
    drop_abs_below: float | None = Field(None, ge=0.0, description="Drop ambiguous pairs with |strength_mean| < x.")
    drop_std_above: float | None = Field(None, gt=0.0, description="Drop pairs whose voters disagree: strength_std > y.")
    drop_bottom_q: float = Field(0.0, ge=0.0, lt=1.0, description="Drop the lowest-strength fraction q instead of "
                                 "flipping it (PrefCleanBench's preferred remedy).")
    soft_label: bool = Field(True, description="Keep the vote's label_prob for soft-label losses; false sets 1.0.")
    margin_from_strength: bool = Field(False, description="Adaptive margin (Secrets II): margin = scale * max(strength, 0).")
    signed_margin: bool = Field(False, description="With margin_from_strength, keep the sign: margin = scale * "
                                "strength (Secrets II uses the signed strength; weak pairs get a negative margin).")
    margin_scale: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _no_double_booking(self):
        if self.flip_bottom_q and self.drop_bottom_q and self.flip_bottom_q + self.drop_bottom_q >= 1:
            raise ValueError("flip_bottom_q + drop_bottom_q must be < 1")
        return self


def _quantile_cut(q: float) -> pl.Expr:
    return pl.col("strength_mean").quantile(q, interpolation="lower") if q > 0 else pl.lit(float("-inf"))


VOTE_COLUMNS = ("votes", "strength_mean", "strength_std", "label_prob")
_SWAPS = (("chosen", "rejected"), ("chosen_score", "rejected_score"))
_NEGATE = ("strength_mean", "margin", "length_ratio", "vote_mean")


def flip(df: pl.DataFrame, mask: pl.Expr | str, columns=()) -> pl.DataFrame:
    """Reverse the label of the pairs where `mask` (a boolean expression or column name) holds:
    swap chosen/rejected and their scores, negate votes and strength_mean, set label_prob to
    1 - label_prob and toggle `flipped`. `margin` (chosen ahead by m) and the log length ratio change
    sign with the sides. strength_std (and agreement) are unchanged by a sign flip.
    Vote columns of `columns` (column voters, `rewards.columns`) are turned around with the pair.
    Applying it twice with the same mask returns the frame unchanged. A null mask means "no"."""
    m = (pl.col(mask) if isinstance(mask, str) else mask).fill_null(False)
    df = df.with_columns(m.alias("_flip"))
    when = lambda a, b: pl.when(pl.col("_flip")).then(b).otherwise(pl.col(a)).alias(a)
    exprs = []
    for a, b in _SWAPS:
        if a in df.columns and b in df.columns:
            exprs += [when(a, pl.col(b)), when(b, pl.col(a))]
    if "votes" in df.columns:
        exprs.append(when("votes", pl.col("votes").list.eval(-pl.element())))
    exprs += [when(c, -pl.col(c)) for c in _NEGATE if c in df.columns]
    if columns:
        from prefdata.rewards.columns import flip_exprs

        exprs += flip_exprs(columns, dict(df.schema), pl.col("_flip"))
    if "label_prob" in df.columns:
        exprs.append(when("label_prob", 1.0 - pl.col("label_prob")))
    flipped = pl.col("flipped").fill_null(False) if "flipped" in df.columns else pl.lit(False)
    exprs.append((flipped ^ pl.col("_flip")).alias("flipped"))
    return df.with_columns(exprs).drop("_flip")


def _join_votes(pairs: pl.DataFrame, votes: pl.DataFrame) -> pl.DataFrame:
    """Pairs with the vote frame's columns (replacing any stale ones), or DataError if a pair has
    no vote or a vote id repeats (a repeated id would silently duplicate pairs in the join)."""
    from prefdata.errors import DataError

    missing = [c for c in ("id", *VOTE_COLUMNS) if c not in votes.columns]
    if missing:
        raise DataError(f"vote frame lacks column(s) {', '.join(missing)}", file="votes")
    dup = votes.filter(pl.col("id").is_duplicated())
    if dup.height:
        first = dup["id"][0]
        ids = dup["id"].n_unique()
        # The count is of that one id (it used to be every repeated row: "occurs 48 times" for a pair twice).
        raise DataError(f"vote id '{first}' occurs {(dup['id'] == first).sum()} times"
                        + (f" ({ids} ids repeat, {dup.height} rows)" if ids > 1 else ""), file="votes", field="id")
    take = ["id", *VOTE_COLUMNS, *(c for c in ("agreement", "length_ratio", "judged") if c in votes.columns)]
    df = pairs.drop([c for c in take[1:] if c in pairs.columns]).join(
        votes.select(take), on="id", how="left", maintain_order="left")
    unvoted = df.filter(pl.col("strength_mean").is_null())
    if unvoted.height:
        raise DataError(f"{unvoted.height} of {df.height} pairs have no vote (first: id '{unvoted['id'][0]}')",
                        file="votes", field="strength_mean")
    return df


def apply(pairs: pl.DataFrame, votes: pl.DataFrame, cfg: PolicyConfig, columns=()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (kept pairs with vote columns, dropped pairs with `drop_reason`).

    Joins `votes` (from `vote.combine`) onto `pairs` by id; every pair needs exactly one vote.
    Drops are decided first; flips then use the same strength and never touch a dropped pair.
    """
    df = _join_votes(pairs, votes)

    # Drop decisions first, all from the same strength the flips use.
    reasons = []
    if cfg.drop_bottom_q > 0:
        reasons.append(pl.when(pl.col("strength_mean") <= _quantile_cut(cfg.drop_bottom_q))
                       .then(pl.lit(f"low strength: bottom {cfg.drop_bottom_q:.0%}")))
    if cfg.drop_abs_below is not None:
        reasons.append(pl.when(pl.col("strength_mean").abs() < cfg.drop_abs_below)
                       .then(pl.lit(f"ambiguous: |strength| < {cfg.drop_abs_below}")))
    if cfg.drop_prob_below is not None:
        flip_cut = cfg.flip_max_prob if cfg.flip_max_prob is not None else -1.0
        reasons.append(pl.when((pl.col("label_prob") < cfg.drop_prob_below) & (pl.col("label_prob") > flip_cut))
                       .then(pl.lit(f"ambiguous: posterior < {cfg.drop_prob_below}")))
    if cfg.drop_std_above is not None:
        reasons.append(pl.when(pl.col("strength_std") > cfg.drop_std_above)
                       .then(pl.lit(f"disagreement: std > {cfg.drop_std_above}")))
    df = df.with_columns(pl.coalesce(reasons).alias("drop_reason") if reasons else pl.lit(None, pl.String).alias("drop_reason"))
    # Pairs whose voters cannot judge them (`judged` false: a group near chance) are never acted on.
    acts = pl.col("judged").fill_null(True) if "judged" in df.columns else pl.lit(True)
    df = df.with_columns(pl.when(acts).then(pl.col("drop_reason")).otherwise(None).alias("drop_reason"))

    flip_rule = pl.lit(False)
    if cfg.flip_max_prob is not None:
        flip_rule = flip_rule | (pl.col("label_prob") <= cfg.flip_max_prob)
    if cfg.flip_bottom_q > 0:
        flip_rule = flip_rule | ((pl.col("strength_mean") <= _quantile_cut(cfg.flip_bottom_q)) & (pl.col("strength_mean") < 0))
    if cfg.flip_below is not None:
        flip_rule = flip_rule | (pl.col("strength_mean") < -cfg.flip_below)
    # Quantiles are taken over all pairs (before dropping), so a pair's fate does not depend on
    # which other pairs happened to be dropped.
    df = flip(df, flip_rule & pl.col("drop_reason").is_null() & acts, columns)
    if not cfg.soft_label:
        df = df.with_columns(pl.lit(1.0).alias("label_prob"))
    else:  # a posterior that cannot judge a pair does not soften it either: its label stays as stored, hard
        df = df.with_columns(pl.when(acts).then(pl.col("label_prob")).otherwise(1.0).alias("label_prob"))
    if cfg.margin_from_strength:
        s = pl.col("strength_mean") if cfg.signed_margin else pl.col("strength_mean").clip(lower_bound=0.0)
        df = df.with_columns((cfg.margin_scale * s).alias("margin"))
    extra = [c for c in ("judged",) if c in df.columns]
    kept = df.filter(pl.col("drop_reason").is_null()).drop("drop_reason", *extra)
    dropped = df.filter(pl.col("drop_reason").is_not_null()).drop(*extra)
    return kept, dropped


def describe_policy(policy: dict) -> str:
    """The policy in words: 'the default policy (flip at posterior <= 0.1)' instead of `policy {}`."""
    cfg = PolicyConfig(**policy)
    acts = []
    if cfg.flip_max_prob is not None:
        acts.append(f"flip at posterior <= {cfg.flip_max_prob:g}")
    if cfg.drop_prob_below is not None:
        acts.append(f"drop at posterior < {cfg.drop_prob_below:g}")
    if cfg.flip_bottom_q:
        acts.append(f"flip the bottom {cfg.flip_bottom_q:.0%} by strength")
    if cfg.drop_bottom_q:
        acts.append(f"drop the bottom {cfg.drop_bottom_q:.0%} by strength")
    for name in ("flip_below", "drop_abs_below", "drop_std_above"):
        if getattr(cfg, name) is not None:
            acts.append(f"{name} {getattr(cfg, name):g}")
    return ("the default policy" if not policy else "the policy") + f" ({'; '.join(acts) or 'no action'})"
