"""`prefdata eval noise`: how well does the vote find wrong labels, and does cleaning help a reward model?

1. Split pairs into train (70%) and a held-out test set (30%) that keeps its original labels. The split
   is by group (pairs sharing a prompt or an answer stay together), so no test text is trained on.
2. Flip a known random fraction of the train labels.
3. Vote on train (cross-fitted, so no voter scored a pair it trained on).
4. Report ROC-AUC for ranking the injected flips by the posterior, beside the same voters without
   length control and the length-only baseline on the same split; precision/recall of the pairs the
   policy itself flips (or drops) against the injected set; the posterior's calibration against the
   known truth.
5. Train a Bradley-Terry reward head on noisy, cleaned (the policy's output), soft-labelled (each pair
   weighted by its posterior, with its swapped twin weighted by the rest) and oracle train data, and
   report held-out pairwise accuracy against the original labels, with a paired bootstrap interval of
   each variant's difference from noisy.

An injected-flip AUC only measures whether labels agree with what the voters learn from the same data;
`eval agreement` and `eval gold` compare against human judgement instead.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation import step as S
from prefdata.curation.step import CleanLabelsConfig, curate, vote
from prefdata.rewards.voters import HeadsVoter
from prefdata.schema import conform


class NoiseEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inject: float = Field(0.2, gt=0, lt=0.5, description="Fraction of train labels flipped on purpose.")
    seed: int = 0
    test_fraction: float = Field(0.3, gt=0, lt=0.9)
    clean: CleanLabelsConfig = Field(default_factory=CleanLabelsConfig)
    rm_backbone: HeadsVoter = Field(default_factory=HeadsVoter,
                                    description="Backbone (features) of the reward head trained in step 5.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of the held-out pairs for intervals.")
    reward_model: bool = Field(True, description="Step 5: train a reward head on noisy, cleaned, dropped, soft and "
                               "oracle data (loads the rm_backbone). False reports the label-level figures only.")


def swap(table: pa.Table, mask: np.ndarray, columns=()) -> pa.Table:
    """Reverse the pairs where `mask` holds; vote columns of `columns` (column voters) turn with them."""
    from prefdata.rewards.columns import flip_exprs

    df = pl.from_arrow(table).with_columns(pl.Series("_m", mask))
    df = df.with_columns(
        pl.when(pl.col("_m")).then(pl.col("rejected")).otherwise(pl.col("chosen")).alias("chosen"),
        pl.when(pl.col("_m")).then(pl.col("chosen")).otherwise(pl.col("rejected")).alias("rejected"),
        *flip_exprs(columns, dict(df.schema), pl.col("_m")),
    ).drop("_m")
    return conform(df.to_arrow(), "pair")


def pairwise_accuracy(reward, xc: np.ndarray, xr: np.ndarray) -> float:
    return float((reward(xc) > reward(xr)).mean())


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, bool)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < y.size else float("nan")


def length_only(ell: np.ndarray) -> np.ndarray:
    """The length prior as a vote, in label orientation: +ell if the data's labels favour longer
    answers, -ell otherwise (the direction is read from the labels being judged)."""
    return ell if (ell > 0).mean() + 0.5 * (ell == 0).mean() >= 0.5 else -ell


def flip_mask(before: pa.Table, after: pa.Table) -> np.ndarray:
    """Pairs (by id of `before`) whose `flipped` state the policy changed."""
    def state(t):
        if "flipped" not in t.column_names:
            return pl.DataFrame({"id": t.column("id").to_pylist(), "f": [False] * t.num_rows})
        return pl.from_arrow(t.select(["id", "flipped"])).select("id", pl.col("flipped").fill_null(False).alias("f"))
    j = state(before).join(state(after), on="id", how="left", suffix="_after", maintain_order="left")
    return (j["f"] != j["f_after"].fill_null(j["f"])).to_numpy()


def bootstrap_diff(correct: dict[str, np.ndarray], base: str, rounds: int, seed: int) -> dict[str, list[float]]:
    """90% paired bootstrap interval of (accuracy of variant - accuracy of `base`) over test pairs."""
    if rounds == 0:
        return {}
    rng = np.random.default_rng(seed)
    n = correct[base].size
    idx = rng.integers(0, n, (rounds, n))
    out = {}
    for k, c in correct.items():
        if k == base:
            continue
        d = c[idx].mean(1) - correct[base][idx].mean(1)
        out[k] = [round(float(x), 4) for x in np.quantile(d, [0.05, 0.95])]
    return out


def split_and_inject(table: pa.Table, seed: int, inject: float, test_fraction: float, columns=()):
    """(train, held-out test, noisy train, injected mask). The split is by group in tenths (pairs that
    share a prompt or an answer stay on one side); `inject` of the train labels are then flipped."""
    from prefdata.rewards.heads import group_folds, pair_groups

    rng = np.random.default_rng(seed)
    part = group_folds(pair_groups(table), 10, rng)
    is_test = part < int(round(test_fraction * 10))
    train, test = table.take(np.flatnonzero(~is_test)), table.take(np.flatnonzero(is_test))
    injected = np.zeros(train.num_rows, dtype=bool)
    injected[rng.choice(train.num_rows, size=int(round(inject * train.num_rows)), replace=False)] = True
    return train, test, swap(train, injected, columns), injected


def run_noise_eval(table: pa.Table, cfg: NoiseEvalConfig, progress: bool = True) -> dict:
    from prefdata.curation.posterior import ece
    from prefdata.rewards.features import Backbone, FeatureCache, pair_features
    from prefdata.rewards.heads import fit_reward

    table = conform(table, "pair")
    train, test, noisy, injected = split_and_inject(table, cfg.seed, cfg.inject, cfg.test_fraction,
                                                    S.column_specs(cfg.clean))

    votes = S.collect_votes(  # through the module: patchable, never a stale binding
        noisy, cfg.clean, seed=cfg.seed, progress=progress)
    kept, dropped, result = curate(noisy, cfg.clean, votes=votes, progress=progress)
    raw = vote(noisy, votes, cfg.clean.model_copy(update={"length_control": False}))
    lp = result.posterior.label_prob
    ell = result.ell
    flips = flip_mask(noisy, kept)
    dropped_ids = set(dropped.column("id").to_pylist())
    drops = np.isin(np.asarray(noisy.column("id").to_pylist()), list(dropped_ids))
    flagged = flips | drops

    def pr(mask):
        tp = int((mask & injected).sum())
        return {"acted": int(mask.sum()), "precision": round(tp / max(int(mask.sum()), 1), 4),
                "recall": round(tp / max(int(injected.sum()), 1), 4)}

    correct = {}
    if cfg.reward_model:
        # Step 5: the same reward head on each version of the train data.
        bb = Backbone(cfg.rm_backbone.backbone, max_length=cfg.rm_backbone.max_length, pooling=cfg.rm_backbone.pooling,
                      layer=cfg.rm_backbone.layer)
        cache = FeatureCache()
        tc, tr = pair_features(test, bb, cache, progress)
        nc, nr = pair_features(noisy, bb, cache, progress)

        def swapped(mask):
            return np.where(mask[:, None], nr, nc), np.where(mask[:, None], nc, nr)

        fc, fr = swapped(flips)
        keep = ~drops
        soft_p = np.where(flips, 1 - lp, lp)[keep]  # the label each cleaned pair carries, softened
        variants = {
            "noisy": (nc, nr, None),
            "cleaned (policy)": (fc[keep], fr[keep], None),
            "soft labels (posterior)": (np.concatenate([fc[keep], fr[keep]]), np.concatenate([fr[keep], fc[keep]]),
                                        np.concatenate([soft_p, 1 - soft_p])),
            "doubted pairs dropped instead (posterior < 0.5)": (nc[lp >= 0.5], nr[lp >= 0.5], None),
            "oracle (injected flips undone)": (*swapped(injected), None),
        }
        for k, (c, r, w) in variants.items():
            head = fit_reward(c, r, seed=cfg.seed, l2=cfg.rm_backbone.l2, weights=w)
            correct[k] = (head(tc) > head(tr)).astype(np.float64)
    truth = (~injected).astype(float)
    from prefdata.curation.baselines import compare, remedies

    summary = result.summary()
    cut = cfg.clean.policy.flip_max_prob if cfg.clean.policy.flip_max_prob is not None else 0.1
    lo_, hi_ = result.posterior.extra.get("noise_interval", (np.nan, np.nan))
    return {
        "verdict": summary.get("verdict", "the voters can judge single labels"), "can_judge": summary["can_judge"],
        "baselines_auc": compare(result.controlled, result.families, result.posterior.log_odds, injected, auc),
        "remedies_at_cut": {"cut": cut, **remedies(lp, ~injected, cut, result.posterior.can_judge)},
        "noise_interval": [round(lo_, 4), round(hi_, 4)],
        "noise_interval_covers_truth": bool(lo_ <= float(injected.mean()) <= hi_),
        "pairs": table.num_rows, "train": train.num_rows, "test": test.num_rows, "injected": int(injected.sum()),
        "voters": list(votes), "families": result.families,
        "roc_auc": round(auc(injected, -result.posterior.log_odds), 4),
        "roc_auc_no_length_control": round(auc(injected, -raw.posterior.log_odds), 4),
        "roc_auc_length_only": round(auc(injected, -length_only(ell)), 4),
        "policy": cfg.clean.policy.model_dump(exclude_defaults=True),
        **pr(flagged), "flipped": pr(flips), "dropped": pr(drops),
        "estimated_noise_rate": round(result.posterior.noise_rate, 4), "true_noise_rate": round(float(injected.mean()), 4),
        "posterior_ece": round(ece(lp, truth), 4),
        "posterior_accuracy": round(float(((lp >= 0.5) == (truth == 1)).mean()), 4),
        "rm_heldout_accuracy": {k: round(float(v.mean()), 4) for k, v in correct.items()},
        "rm_diff_vs_noisy_90ci": bootstrap_diff(correct, "noisy", cfg.bootstrap, cfg.seed) if correct else {},
        "posterior": summary,
    }


def format_report(r: dict) -> str:
    from prefdata.curation.policies import describe_policy

    ci = r.get("rm_diff_vs_noisy_90ci", {})
    base = r.get("baselines_auc", {})
    brows = " | ".join(f"{k} {v:.3f}" for k, v in base.items() if isinstance(v, float))
    head = "" if r.get("can_judge", True) else f"CANNOT JUDGE: {r['verdict']}\n"
    acc = "\n".join(f"| {k} | {v:.3f} | {'—' if k not in ci else f'{ci[k][0]:+.3f} … {ci[k][1]:+.3f}'} |"
                    for k, v in r["rm_heldout_accuracy"].items())
    fams = ", ".join(f"{f} (acc {v['accuracy']:.2f}, length corr {v['length_corr']:+.2f})"
                     for f, v in r["posterior"]["families"].items())
    lo, hi = r.get("noise_interval", (float("nan"), float("nan")))
    table = (f"\n\n| reward model trained on | held-out pairwise accuracy | minus noisy, 90% CI |\n|---|---|---|\n{acc}"
             if acc else "")
    return (f"{head}pairs {r['pairs']} (train {r['train']}, held-out {r['test']}), injected flips {r['injected']}\n"
            f"families: {fams}\n"
            f"ROC-AUC posterior {r['roc_auc']:.3f} | without length control {r['roc_auc_no_length_control']:.3f} | "
            f"length only {r['roc_auc_length_only']:.3f}\n"
            f"{describe_policy(r['policy'])} flipped or dropped {r['acted']} pairs: precision {r['precision']:.3f}, "
            f"recall {r['recall']:.3f} (flipped {r['flipped']['acted']}, dropped {r['dropped']['acted']})\n"
            f"ROC-AUC against the baselines: {brows}\n"
            f"noise rate estimated {r['estimated_noise_rate']:.3f} (90% interval {lo:.3f} – {hi:.3f}) vs true "
            f"{r['true_noise_rate']:.3f}; posterior accuracy {r['posterior_accuracy']:.3f}, ECE {r['posterior_ece']:.3f}"
            f"{table}")
