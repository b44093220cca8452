"""Combine reward voters into a per-pair preference strength (Secrets of RLHF II, arXiv 2401.06080, §4).

Each voter gives d = r(x, chosen) - r(x, rejected) for every pair. Voters live on different scales
(a reward model's logits, a judge's log-odds, a head's margin), so each is divided by its own
standard deviation before they are combined. It is not centred: a voter's overall lean towards the
chosen side is exactly the signal we want to keep.

    strength_mean = mean over voters of the scaled d      (how strongly the label is supported)
    strength_std  = std over voters                        (how much the voters disagree)
    label_prob    = sigmoid(a * strength_mean)             (soft label for the trainers)

`a` is fitted by maximum likelihood of the dataset's own labels (1-D logistic regression with no
intercept, Platt-style): label_prob is then calibrated to how often a pair with that strength
carries the label it has. Pass `temperature` to fix a = 1/T instead; temperature=1.0 gives the
plain sigmoid(strength_mean), i.e. the voters' standardised mean read as log-odds. (A fixed T = 1 is
the simplest choice but is not calibrated: its sharpness depends on how many voters there are and how
well they agree, which the fitted slope absorbs. The fit is clipped to a in [1e-3, 50]: on a set with
no negative strengths the likelihood has no finite maximum.)

All array work is numpy/polars; there is no Python loop over pairs.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from prefdata.errors import DataError


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


def fit_slope(strength: np.ndarray, iters: int = 50) -> float:
    """argmax_a sum log sigmoid(a * s): Newton steps on a concave 1-D problem."""
    a = 1.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-a * strength))
        grad = np.sum((1.0 - p) * strength)
        hess = -np.sum(p * (1.0 - p) * strength ** 2)
        if hess > -1e-12:
            break
        step = grad / hess
        a = float(np.clip(a - step, 1e-3, 50.0))  # all-positive strengths would push a to infinity
        if abs(step) < 1e-8:
            break
    return a


def combine(pair_ids, voter_scores: dict[str, np.ndarray], *, temperature: float | None = None,
            source: str = "vote") -> pl.DataFrame:
    """Per-pair vote columns: id, votes, strength_mean, strength_std, label_prob, agreement."""
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        from prefdata.errors import PrefdataError

        raise PrefdataError(f"temperature must be a positive finite number, got {temperature}")
    ids = list(pair_ids) if not isinstance(pair_ids, pl.Series) else pair_ids
    d = check_voters(len(ids), voter_scores, source)  # (n, m)
    scale = d.std(axis=0)
    scale[scale == 0] = 1.0  # a constant voter carries no ranking information; leave it unscaled
    z = d / scale  # (n, m)
    mean = z.mean(axis=1)
    std = z.std(axis=1)
    agree = (np.sign(z) == np.sign(mean)[:, None]).mean(axis=1)
    slope = fit_slope(mean) if temperature is None else 1.0 / temperature
    label_prob = 1.0 / (1.0 + np.exp(-slope * mean))
    return pl.DataFrame({
        "id": ids,
        "votes": pl.Series("votes", z, dtype=pl.Array(pl.Float64, z.shape[1])).cast(pl.List(pl.Float64)),
        "strength_mean": mean,
        "strength_std": std,
        "label_prob": label_prob,
        "agreement": agree,
    })
