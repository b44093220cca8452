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


def check_voters(n_pairs: int, voter_scores: dict[str, np.ndarray], source: str = "vote",
                 missing_ok=()) -> np.ndarray:
    """Stack voters into an (n_pairs, n_voters) matrix, or fail naming the voter and row. Voters of a
    family in `missing_ok` (votes read from columns) may hold NaN: no vote on that pair."""
    if n_pairs == 0:
        raise DataError("the dataset has no pairs to vote on", file=source)
    if not voter_scores:
        raise DataError("no voters configured", file=source)
    cols = []
    for name, arr in voter_scores.items():
        a = np.asarray(arr, dtype=np.float64).reshape(-1)
        if a.shape[0] != n_pairs:
            raise DataError(f"voter '{name}' scored {a.shape[0]} rows but the dataset has {n_pairs} pairs", file=source)
        bad = np.flatnonzero(np.isinf(a) if family_of(name) in missing_ok else ~np.isfinite(a))
        if bad.size:
            raise DataError(f"voter '{name}' gave a non-finite score ({a[bad[0]]})", file=source,
                            row=int(bad[0]) + 1, field=f"votes.{name}")
        cols.append(a)
    return np.stack(cols, axis=1)


def family_of(voter: str) -> str:
    m = _HEAD.match(voter)
    return m.group("family") if m else voter


def _unit(x: np.ndarray, keep=None) -> np.ndarray:
    """Divide each column by its standard deviation over the pairs it voted on (a constant or empty
    column, and the columns where `keep` is true, are left as they are)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.nanstd(np.where(np.isfinite(x), x, np.nan), axis=0) if x.size else np.ones(x.shape[1])
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    if keep is not None:
        sd = np.where(keep, 1.0, sd)
    return x / sd


def length_ratio(chosen_len, rejected_len) -> np.ndarray:
    return np.log1p(np.asarray(chosen_len, dtype=np.float64)) - np.log1p(np.asarray(rejected_len, dtype=np.float64))


def remove_length(v: np.ndarray, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of v: (v - b * ell, b) with b the least-squares slope of v on ell (with intercept),
    fitted on the pairs the column voted on (NaN stays NaN)."""
    out, b = v.copy(), np.zeros(v.shape[1])
    for f in range(v.shape[1]):  # a loop over families, never pairs
        m = np.isfinite(v[:, f])
        e = ell[m]
        lc = e - e.mean() if e.size else e
        var = float(lc @ lc)
        if e.size < 3 or var <= 1e-12 * max(len(e), 1) * (1.0 + float(e @ e)):  # no slope to estimate
            continue
        b[f] = float(lc @ (v[m, f] - v[m, f].mean())) / var
        out[:, f] = v[:, f] - ell * b[f]
    return out, b


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
        acc, w = post.family_accuracy, post.weights
        iv = post.extra.get("accuracy_interval") or [(float("nan"), float("nan"))] * len(self.families)
        out = {"families": {f: {"kind": post.kinds[i], "accuracy": round(acc[f], 4),
                                "accuracy_interval": [round(x, 4) for x in iv[i]], "weight": round(w[f], 4),
                                "voted": round(float(post.voted[i]), 4), "ties": round(float(post.ties[i]), 4),
                                "length_corr": round(float(self.length_corr[i]), 4),
                                "length_slope": round(float(self.length_slope[i]), 4)}
                            for i, f in enumerate(self.families)},
               "label_accuracy": round(post.alpha, 4), "noise_rate": round(post.noise_rate, 4),
               "separation": round(post.separation, 4), "can_judge": post.can_judge,
               "length_control": self.length_control, "em_iterations": post.iterations}
        if not post.can_judge:
            out["verdict"] = cannot_judge_reason(post)
        if "noise_interval" in post.extra:
            out["noise_interval"] = [round(x, 4) for x in post.extra["noise_interval"]]
        if len(self.families) > 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                c = pl.DataFrame(np.nan_to_num(self.controlled)).corr().to_numpy() if self.controlled.shape[0] > 2 else np.eye(2)
            vals = c[np.triu_indices_from(c, 1)]
            out["family_corr"] = round(float(np.nanmean(vals)), 4) if np.isfinite(vals).any() else None
        if "gold" in post.extra:
            out["gold"] = post.extra["gold"]
        if "groups" in post.extra:
            out["groups"] = post.extra["groups"]
            out["judged_share"] = round(float(post.judged.mean()), 4)
        return out


def cannot_judge_reason(post: P.Posterior) -> str:
    """One plain sentence, with the measured reason, for voters too weak to judge single labels."""
    acc = post.family_accuracy
    best = max(acc, key=lambda f: abs(acc[f] - 0.5)) if acc else None
    fams = ", ".join(f"{f} {a:.2f}" for f, a in acc.items())
    if post.judge_problem == "one family":
        return ("one verdict family only: beside the stored label that makes two annotators, and how right the "
                "labels are cannot be told apart from how right the family is; no label was changed; add a "
                "second, independent family (another judge, a reward model, an annotator)")
    if post.judge_problem == "against the labels":
        return (f"voters against the labels: together they call {post.noise_rate:.0%} of the stored labels wrong "
                f"(more than {P.MAX_NOISE:.0%}), which more likely means they share a bias (adversarial pairs, one "
                f"judge style) than that most labels are wrong; family accuracies as fitted {fams}; no label was "
                "changed, check a sample by hand or add a different kind of voter")
    return (f"voters near chance: they separate right from wrong labels with AUC {P.below(post.separation)} (below "
            f"{P.JUDGE_MIN_SEPARATION}); family accuracies {fams}; the posterior is the prior, so no label can be "
            f"judged and none was changed" + (f" (strongest: {best})" if best else ""))


LENGTH_FAMILY = "length-prior"


def combine(pair_ids, voter_scores: dict[str, np.ndarray], *, ell: np.ndarray | None = None,
            length_control: bool = True, length_family: bool = False, gold: np.ndarray | None = None,
            interval: bool = True, source: str = "vote", kinds: dict[str, str] | None = None,
            groups=None) -> Vote:
    """Families, length control and the posterior for every pair (see the module docstring).

    `kinds` maps a family to "verdict" (votes in [-1, 1] read as they are, ties 0, NaN missing: judges
    and annotators from columns) or "score" (the default: standardised, length-controlled). Families
    in `kinds` may have missing votes (NaN). `interval` is kept for callers; the posterior always
    carries its intervals now (`posterior.fit`). `groups` (one label per pair) fits each group on its
    own (`posterior.fit_groups`)."""
    kinds = dict(kinds or {})
    ids = list(pair_ids) if not isinstance(pair_ids, pl.Series) else pair_ids
    n = len(ids)
    names = list(voter_scores)
    fams = list(dict.fromkeys(family_of(v) for v in names))
    fam_kind = [kinds.get(f, P.SCORE) for f in fams]
    member = np.array([fams.index(family_of(v)) for v in names])  # (m,)
    raw_votes = check_voters(n, voter_scores, source, missing_ok=set(kinds))
    verdict_member = np.array([fam_kind[f] == P.VERDICT for f in member])
    d = _unit(raw_votes, keep=verdict_member)  # (n, m): verdicts keep their [-1, 1] scale
    onehot = (member[None, :] == np.arange(len(fams))[:, None]).astype(np.float64)  # (F, m)
    seen = np.isfinite(d)
    d0 = np.where(seen, d, 0.0)
    count = seen.astype(np.float64) @ onehot.T  # (n, F) members that voted
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, d0 @ onehot.T / np.maximum(count, 1), np.nan)  # (n, F)
        spread = np.sqrt(np.maximum((d0 ** 2) @ onehot.T / np.maximum(count, 1) - np.nan_to_num(mean) ** 2, 0.0))
    is_verdict = np.array([k == P.VERDICT for k in fam_kind], dtype=bool)
    raw = np.where(is_verdict[None, :], mean, _unit(mean))
    ell = np.zeros(n) if ell is None else np.asarray(ell, dtype=np.float64).reshape(-1)
    if ell.shape[0] != n:
        raise DataError(f"length ratios for {ell.shape[0]} pairs but the dataset has {n}", file=source)
    corr = np.zeros(len(fams))
    for f in range(len(fams)):  # a loop over families, never pairs
        m = np.isfinite(raw[:, f])
        if m.sum() > 2 and ell[m].std() > 0 and raw[m, f].std() > 0:
            corr[f] = np.corrcoef(raw[m, f], ell[m])[0, 1]
    controlled, slope = raw.copy(), np.zeros(len(fams))
    if length_control and (~is_verdict).any():
        # Length control regresses a continuous vote on the length ratio; a verdict is a category, and
        # its length bias is the judge's own, which the posterior weighs through its accuracy.
        sc = ~is_verdict
        controlled[:, sc], slope[sc] = remove_length(raw[:, sc], ell)
        controlled[:, sc] = _unit(controlled[:, sc])
    if length_family and ell.std() > 0:
        # The length prior as an annotator of its own, with a reliability the model estimates, beside
        # families that no longer carry it: its weight is explicit instead of hidden in every family.
        fams = [*fams, LENGTH_FAMILY]
        fam_kind = [*fam_kind, P.SCORE]
        raw = np.column_stack([raw, ell / ell.std()])
        controlled = np.column_stack([controlled, ell / ell.std()])
        spread = np.column_stack([spread, np.zeros(n)])
        slope = np.r_[slope, 0.0]
        corr = np.r_[corr, 1.0]
    post = (P.fit(controlled, fams, kinds=fam_kind, gold=gold) if groups is None
            else P.fit_groups(controlled, groups, fams, kinds=fam_kind, gold=gold))
    with np.errstate(invalid="ignore"):
        z_mean = np.nanmean(np.where(np.isfinite(controlled), controlled, np.nan), axis=1) if controlled.size else np.zeros(n)
        signs = np.where(np.isfinite(controlled), np.sign(controlled) == np.sign(post.evidence)[:, None], np.nan)
        agree = np.nanmean(signs, axis=1)
        std = (np.nanstd(np.where(np.isfinite(controlled), controlled, np.nan), axis=1)
               if controlled.shape[1] > 1 else spread[:, 0])
    frame = pl.DataFrame({
        "id": ids,
        "votes": pl.Series("votes", controlled, dtype=pl.Array(pl.Float64, controlled.shape[1])).cast(pl.List(pl.Float64)),
        "strength_mean": post.evidence,
        "strength_std": np.nan_to_num(std),
        "label_prob": post.label_prob,
        "agreement": np.nan_to_num(agree, nan=0.5),
        "length_ratio": ell,
        "vote_mean": np.nan_to_num(z_mean),
        "judged": post.judged if post.judged is not None else np.full(n, post.can_judge),
    }).with_columns(pl.col("votes").list.eval(pl.element().fill_nan(None)))
    return Vote(frame=frame, families=fams, raw=raw, controlled=controlled, spread=spread, length_slope=slope,
                length_corr=np.nan_to_num(corr), ell=ell, posterior=post, length_control=length_control)
