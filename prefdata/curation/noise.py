"""`prefdata eval noise`: how well does the vote find wrong labels, and does cleaning help a reward model?

1. Split pairs into train (70%) and a held-out test set (30%) that keeps its original labels.
2. Flip a known random fraction of the train labels.
3. Vote on train (cross-fitted, so no voter scored a pair it trained on).
4. Report ROC-AUC for ranking the injected flips by -strength, and precision/recall of the pairs the
   policy flips (or drops) against the injected set.
5. Train a Bradley-Terry reward head on noisy, flipped-clean and dropped-clean train data, and report
   its pairwise accuracy on the held-out test set against the original human labels.

The reward model of step 5 is a linear BT head on the same cached backbone features (cheap, and the
same for every variant, so the comparison isolates the effect of the data).
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation.policies import PolicyConfig
from prefdata.curation.step import CleanLabelsConfig, collect_votes, curate
from prefdata.rewards.voters import HeadsVoter
from prefdata.schema import conform


class NoiseEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inject: float = Field(0.2, gt=0, lt=0.5, description="Fraction of train labels flipped on purpose.")
    seed: int = 0
    test_fraction: float = Field(0.3, gt=0, lt=0.9)
    clean: CleanLabelsConfig = Field(default_factory=lambda: CleanLabelsConfig(
        voters=[HeadsVoter(backbone="smollm2", k=10)], policy=PolicyConfig(flip_bottom_q=0.2)))
    rm_backbone: HeadsVoter = Field(default_factory=lambda: HeadsVoter(backbone="smollm2"),
                                    description="Backbone (features) of the reward head trained in step 5.")


def swap(table: pa.Table, mask: np.ndarray) -> pa.Table:
    df = pl.from_arrow(table).with_columns(pl.Series("_m", mask))
    df = df.with_columns(
        pl.when(pl.col("_m")).then(pl.col("rejected")).otherwise(pl.col("chosen")).alias("chosen"),
        pl.when(pl.col("_m")).then(pl.col("chosen")).otherwise(pl.col("rejected")).alias("rejected"),
    ).drop("_m")
    return conform(df.to_arrow(), "pair")


def pairwise_accuracy(reward, xc: np.ndarray, xr: np.ndarray) -> float:
    return float((reward(xc) > reward(xr)).mean())


def run_noise_eval(table: pa.Table, cfg: NoiseEvalConfig, progress: bool = True) -> dict:
    from sklearn.metrics import roc_auc_score

    from prefdata.rewards.features import Backbone, FeatureCache, pair_features
    from prefdata.rewards.heads import fit_reward

    table = conform(table, "pair")
    n = table.num_rows
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_test = int(round(n * cfg.test_fraction))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    train, test = table.take(train_idx), table.take(test_idx)
    injected = np.zeros(train.num_rows, dtype=bool)
    injected[rng.choice(train.num_rows, size=int(round(cfg.inject * train.num_rows)), replace=False)] = True
    noisy = swap(train, injected)

    votes = collect_votes(noisy, cfg.clean, seed=cfg.seed, progress=progress)
    kept, dropped, frame = curate(noisy, cfg.clean, votes=votes, progress=progress)
    strength = frame["strength_mean"].to_numpy()
    auc = float(roc_auc_score(injected, -strength))
    ids = np.asarray(noisy.column("id").to_pylist())
    acted = set(kept.filter(pa.compute.equal(kept.column("flipped"), True)).column("id").to_pylist()) | \
        set(dropped.column("id").to_pylist())
    flagged = np.isin(ids, list(acted))
    tp = int((flagged & injected).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(injected.sum()), 1)

    # Step 5: the same reward head on three versions of the train data.
    bb = Backbone(cfg.rm_backbone.backbone, max_length=cfg.rm_backbone.max_length, pooling=cfg.rm_backbone.pooling,
                  layer=cfg.rm_backbone.layer)
    cache = FeatureCache()
    tc, tr = pair_features(test, bb, cache, progress)
    nc, nr = pair_features(noisy, bb, cache, progress)
    # Cleaned variants act on the weakest fraction q (the policy's flip quantile): flip those with
    # negative strength, or drop all of them.
    q = cfg.clean.policy.flip_bottom_q or 0.2
    weakest = strength <= np.quantile(strength, q)
    flip = weakest & (strength < 0)

    def swapped(mask):
        return np.where(mask[:, None], nr, nc), np.where(mask[:, None], nc, nr)

    variants = {
        "noisy": (nc, nr),
        "flipped-clean": swapped(flip),
        "dropped-clean": (nc[~weakest], nr[~weakest]),
        "oracle (injected flips undone)": swapped(injected),
    }
    accuracy = {k: pairwise_accuracy(fit_reward(c, r, seed=cfg.seed, l2=cfg.rm_backbone.l2), tc, tr)
                for k, (c, r) in variants.items()}
    return {
        "pairs": n, "train": train.num_rows, "test": test.num_rows, "injected": int(injected.sum()),
        "voters": list(votes), "roc_auc": round(auc, 4),
        "policy": cfg.clean.policy.model_dump(exclude_defaults=True),
        "flagged": int(flagged.sum()), "precision": round(precision, 4), "recall": round(recall, 4),
        "rm_heldout_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "negative_strength_share": round(float((strength < 0).mean()), 4),
    }


def format_report(r: dict) -> str:
    acc = "\n".join(f"| {k} | {v:.3f} |" for k, v in r["rm_heldout_accuracy"].items())
    return (f"pairs {r['pairs']} (train {r['train']}, held-out {r['test']}), injected flips {r['injected']}\n"
            f"voters: {len(r['voters'])}  ROC-AUC {r['roc_auc']:.3f}  precision {r['precision']:.3f}  "
            f"recall {r['recall']:.3f} at policy {json.dumps(r['policy'])}\n\n"
            f"| reward model trained on | held-out pairwise accuracy |\n|---|---|\n{acc}")
