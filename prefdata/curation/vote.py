"""Combine reward voters into one posterior per pair: families, length control, latent-class model.

1. Families. A voter's name is `family:index` when it is one of several bootstrap heads of one
   source (`heads:smollm2:linear:3`), or just the family (`rm:...`, `judge:...`, `lm:...`). Heads of
   one family see the same features and correlate at about 0.9, so they are averaged into one family
   vote; their spread is kept as the family's own uncertainty. Each head is divided by its standard
   deviation first (not centred: a voter's lean towards the stored label is the signal).
2. Length control. Length is the best-known bias of judges and reward models (Dubois et al. 2024,
   length-controlled AlpacaEval; Singhal et al. 2023). Each family vote v is regressed on the log
   length ratio l = log((1 + |chosen|) / (1 + |rejected|)) of the two answers and b * l is removed:
   what the family would say if the two answers were equally long. The raw vote and b are reported.
3. Posterior. `posterior.fit` treats the stored label and each family as annotators of a latent
   "label is right" and returns label_prob = P(label right | everything). `strength_mean` is the
   families' summed log-likelihood ratio (the posterior log-odds without the label's prior), in
   log-odds units; `strength_std` is the spread of the standardised family votes.

All array work is numpy/polars; there is no Python loop over pairs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from prefdata.curation import posterior as P
from prefdata.errors import DataError

_HEAD = re.compile(r"^(?P<family>.+):(?P<head>\d+)$")


def check_voters(n_pairs: int, voter_scores: dict[str, np.ndarray], source: str = "vote") -> np.ndarray:
    """Stack voters into an (n_pairs, n_voters) matrix, or fail naming the voter and row."""
    if n_pairs == 0:
        raise DataError("the dataset has no pairs to vote on", file=source)
    if not voter_scores:
        raise DataError("no voters configured", file=source)
    cols = []
    for name, arr in voter_scores.items():
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.shape[0] != n_pairs:
            raise DataError(f"voter '{name}' scored {a.shape[0]} rows but the dataset has {n_pairs} pairs", file=source)
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise DataError(f"voter '{name}' gave a non-finite score ({a[bad[0]]})", file=source,
                            row=int(bad[0]) + 1, field=f"votes.{name}")
        cols.append(a)
    return np.stack(cols, axis=1)


def family_of(voter: str) -> str:
    m = _HEAD.match(voter)
    return m.group("family") if m else voter


def _unit(x: np.ndarray) -> np.ndarray:
    """Divide each column by its standard deviation (a constant column is left as is)."""
    sd = x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return x / sd


def length_ratio(chosen_len, rejected_len) -> np.ndarray:
    return np.log1p(np.asarray(chosen_len, dtype=np.float64)) - np.log1p(np.asarray(rejected_len, dtype=np.float64))


def remove_length(v: np.ndarray, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of v: (v - b * ell, b) with b the least-squares slope of v on ell (with intercept)."""
    lc = ell - ell.mean()
    var = float(lc @ lc)
    if var <= 1e-12 * max(len(ell), 1) * (1.0 + float(ell @ ell)):  # constant ratio: no slope to estimate
        return v.copy(), np.zeros(v.shape[1])
    b = (lc @ (v - v.mean(0))) / var  # (F,)
    return v - ell[:, None] * b[None, :], b


@dataclass
class Vote:
    frame: pl.DataFrame  # per pair: id, votes, strength_mean, strength_std, label_prob, agreement, length_ratio
    families: list[str]
    raw: np.ndarray  # (n, F) standardised family votes before length control
    controlled: np.ndarray  # (n, F) what the posterior used (length-controlled unless switched off)
    spread: np.ndarray  # (n, F) std of a family's heads (0 for a single voter)
    length_slope: np.ndarray  # (F,) b of each family's vote on the log length ratio
    length_corr: np.ndarray  # (F,) Pearson correlation of each raw family vote with the log length ratio
    ell: np.ndarray  # (n,) log length ratio
    posterior: P.Posterior
    length_control: bool

    def summary(self) -> dict:
        post = self.posterior
        acc = post.family_accuracy
        out = {"families": {f: {"accuracy": round(acc[f], 4), "weight": round(post.weights[f], 4),
                                "length_corr": round(float(self.length_corr[i]), 4),
                                "length_slope": round(float(self.length_slope[i]), 4)}
                            for i, f in enumerate(self.families)},
               "label_accuracy": round(post.alpha, 4), "noise_rate": round(post.noise_rate, 4),
               "length_control": self.length_control, "em_iterations": post.iterations}
        if "noise_interval" in post.extra:
            out["noise_interval"] = [round(x, 4) for x in post.extra["noise_interval"]]
        if len(self.families) > 1:
            c = np.corrcoef(self.controlled.T)
            out["family_corr"] = round(float(c[np.triu_indices_from(c, 1)].mean()), 4)
        if "gold" in post.extra:
            out["gold"] = post.extra["gold"]
        return out


LENGTH_FAMILY = "length-prior"


def combine(pair_ids, voter_scores: dict[str, np.ndarray], *, ell: np.ndarray | None = None,
            length_control: bool = True, length_family: bool = False, gold: np.ndarray | None = None,
            interval: bool = True, source: str = "vote") -> Vote:
    """Families, length control and the posterior for every pair (see the module docstring)."""
    ids = list(pair_ids) if not isinstance(pair_ids, pl.Series) else pair_ids
    n = len(ids)
    d = _unit(check_voters(n, voter_scores, source))  # (n, m)
    names = list(voter_scores)
    fams = list(dict.fromkeys(family_of(v) for v in names))
    member = np.array([fams.index(family_of(v)) for v in names])  # (m,)
    onehot = (member[None, :] == np.arange(len(fams))[:, None]).astype(np.float64)  # (F, m)
    count = onehot.sum(1)
    mean = d @ onehot.T / count  # (n, F)
    spread = np.sqrt(np.maximum((d ** 2) @ onehot.T / count - mean ** 2, 0.0))
    raw = _unit(mean)
    ell = np.zeros(n) if ell is None else np.asarray(ell, dtype=np.float64).reshape(-1)
    if ell.shape[0] != n:
        raise DataError(f"length ratios for {ell.shape[0]} pairs but the dataset has {n}", file=source)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.array([np.corrcoef(raw[:, f], ell)[0, 1] if ell.std() > 0 and raw[:, f].std() > 0 else 0.0
                         for f in range(len(fams))])
    controlled, slope = remove_length(raw, ell) if length_control else (raw, np.zeros(len(fams)))
    controlled = _unit(controlled)
    if length_family and ell.std() > 0:
        # The length prior as an annotator of its own, with a reliability the model estimates, beside
        # families that no longer carry it: its weight is explicit instead of hidden in every family.
        fams = [*fams, LENGTH_FAMILY]
        raw = np.column_stack([raw, ell / ell.std()])
        controlled = np.column_stack([controlled, ell / ell.std()])
        spread = np.column_stack([spread, np.zeros(n)])
        slope = np.r_[slope, 0.0]
        corr = np.r_[corr, 1.0]
    post = P.fit(controlled, fams, gold=gold)
    if interval:
        post.extra["noise_interval"] = P.noise_interval(controlled, rounds=100)
    z_mean = controlled.mean(1)
    agree = (np.sign(controlled) == np.sign(post.evidence)[:, None]).mean(axis=1)
    frame = pl.DataFrame({
        "id": ids,
        "votes": pl.Series("votes", controlled, dtype=pl.Array(pl.Float64, controlled.shape[1])).cast(pl.List(pl.Float64)),
        "strength_mean": post.evidence,
        "strength_std": controlled.std(axis=1) if controlled.shape[1] > 1 else spread[:, 0],
        "label_prob": post.label_prob,
        "agreement": agree,
        "length_ratio": ell,
        "vote_mean": z_mean,
    })
    return Vote(frame=frame, families=fams, raw=raw, controlled=controlled, spread=spread, length_slope=slope,
                length_corr=np.nan_to_num(corr), ell=ell, posterior=post, length_control=length_control)
