"""Curation measured against human judgement and injected flips, side by side with the first
version's vote and the length-only baseline, on the shared dev sets, for several seeds.

    .venv/bin/python benchmarks/bench_curation_quality.py --seeds 0 1 2 --out /tmp/curation_quality.json

Data (read from ../shared/data, never copied): HH harmless dev (1,500 crowdworker pairs) and PandaLM dev
(500 pairs, 3 annotators each; `prefdata.annotators.pandalm`, the `--layout pandalm` importer, makes
pairs with an agreement column).

Methods, all on the same votes per seed (10 SmolLM2 heads + SmolLM2 answer log-prob, 512 tokens):
- posterior: the shipped default (families, length control, latent-class posterior, flip at <= 0.1);
- posterior, no length control;
- first version: every voter standardised and averaged into one strength, flip the weakest 10% when
  negative (the rule `clean_labels` shipped before), on the same votes;
- length only: the length prior as the vote (longer or shorter wins, as the labels favour).

Figures per dataset and seed:
- injected flips (20% of a 70% train split): ROC-AUC of each method's score, and the precision of
  what each policy flips;
- downstream: a linear BT reward head on SmolLM2 features trained on noisy, cleaned (each policy),
  soft-labelled (posterior) and oracle train data; held-out accuracy against the original labels, and
  a paired bootstrap 90% interval of the difference from noisy;
- PandaLM only, on the untouched labels: Spearman rho between each score and annotator agreement,
  AUC unanimous vs split, unanimous pairs flipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def first_version_strength(votes: dict[str, np.ndarray]) -> np.ndarray:
    """The old rule: each voter divided by its std, the mean over all voters (heads count as many)."""
    d = np.stack([v / (v.std() or 1.0) for v in votes.values()], 1)
    return d.mean(1)


def first_version_flips(s: np.ndarray, q: float = 0.1) -> np.ndarray:
    return (s <= np.quantile(s, q, method="lower")) & (s < 0)


def methods(table, votes, cfg):
    from prefdata.curation.noise import length_only
    from prefdata.curation.step import vote

    post = vote(table, votes, cfg)
    raw = vote(table, votes, cfg.model_copy(update={"length_control": False}))
    withlen = vote(table, votes, cfg.model_copy(update={"length_family": True}))
    old = first_version_strength(votes)
    ell = length_only(post.ell)
    lp = post.posterior.label_prob
    return {
        "posterior": (post.posterior.log_odds, lp <= 0.1, lp),
        "posterior, no length control": (raw.posterior.log_odds, raw.posterior.label_prob <= 0.1, None),
        "posterior + length as a family": (withlen.posterior.log_odds, withlen.posterior.label_prob <= 0.1,
                                           withlen.posterior.label_prob),
        "first version (mean of voters, flip weakest 10%)": (old, first_version_flips(old), None),
        "length only": (ell, np.zeros(len(ell), bool), None),
    }, post


def finetuned_downstream(noisy, test, flipped, flips, lp, seed: int, subset: int, steps: int) -> dict:
    """The fine-tuned variant: one LoRA reward model (embedded SmolLM2) per training set variant, the
    same `subset` of train pairs each time, pairwise accuracy on the held-out pairs."""
    import pyarrow as pa

    from prefdata.curation.noise import swap
    from prefdata.rewards.finetuned import FinetunedRMVoter, finetuned_heldout_accuracy

    spec = FinetunedRMVoter(subset=subset, max_steps=steps, batch_size=8, max_length=384, seed=seed)
    cleaned = swap(noisy, flips)
    soft = cleaned.drop([c for c in ("label_prob",) if c in cleaned.column_names]).append_column(
        "label_prob", pa.array(np.where(flips, 1 - lp, lp)))
    sets = {"noisy": noisy, "cleaned: posterior": cleaned, "soft: posterior": soft, "oracle": swap(noisy, flipped)}
    return {k: round(finetuned_heldout_accuracy(t, test, spec, seed=seed), 4) for k, t in sets.items()}


def injected(table, cfg, seed: int, inject: float = 0.2, test_fraction: float = 0.3, rounds: int = 1000,
             finetuned: int = 0, finetuned_steps: int = 40):
    from prefdata.curation.noise import auc, bootstrap_diff, split_and_inject
    from prefdata.curation.step import collect_votes
    from prefdata.rewards.features import Backbone, FeatureCache, pair_features
    from prefdata.rewards.heads import fit_reward

    train, test, noisy, flipped = split_and_inject(table, seed, inject, test_fraction)
    votes = collect_votes(noisy, cfg, seed=seed, progress=False)
    ms, post = methods(noisy, votes, cfg)

    bb = Backbone("smollm2", max_length=512)
    cache = FeatureCache()
    tc, tr = pair_features(test, bb, cache, False)
    nc, nr = pair_features(noisy, bb, cache, False)

    def head_correct(c, r, w=None):
        h = fit_reward(c, r, seed=seed, l2=10.0, weights=w)
        return (h(tc) > h(tr)).astype(float)

    def swapped(mask):
        return np.where(mask[:, None], nr, nc), np.where(mask[:, None], nc, nr)

    correct = {"noisy": head_correct(nc, nr), "oracle": head_correct(*swapped(flipped))}
    out = {"train": train.num_rows, "test": test.num_rows, "injected": int(flipped.sum()), "by_method": {}}
    for name, (score, flips, lp) in ms.items():
        row = {"auc": round(auc(flipped, -score), 4), "flips": int(flips.sum()),
               "flip_precision": round(float((flips & flipped).sum() / max(flips.sum(), 1)), 4)}
        if flips.any():
            correct[f"cleaned: {name}"] = head_correct(*swapped(flips))
        if lp is not None:
            fc, fr = swapped(flips)
            p = np.where(flips, 1 - lp, lp)
            correct[f"soft: {name}"] = head_correct(np.concatenate([fc, fr]), np.concatenate([fr, fc]),
                                                    np.concatenate([p, 1 - p]))
        out["by_method"][name] = row
    out["rm_accuracy"] = {k: round(float(v.mean()), 4) for k, v in correct.items()}
    out["rm_diff_vs_noisy_90ci"] = bootstrap_diff(correct, "noisy", rounds, seed)
    out["estimated_noise"] = round(post.posterior.noise_rate, 4)
    out["families"] = post.summary()["families"]
    if finetuned:
        _, flips, lp = ms["posterior"]
        out["finetuned_rm_accuracy"] = finetuned_downstream(noisy, test, flipped, flips, lp, seed, finetuned,
                                                            finetuned_steps)
    return out


def agreement(table, cfg, seed: int):
    from prefdata.curation.human import _spearman
    from prefdata.curation.noise import auc
    from prefdata.curation.step import collect_votes

    agree = np.asarray(table.column("agreement").to_pylist(), float)
    un = agree == agree.max()
    votes = collect_votes(table, cfg, seed=seed, progress=False)
    ms, post = methods(table, votes, cfg)
    out = {"pairs": table.num_rows, "unanimous": int(un.sum()), "by_method": {}}
    for name, (score, flips, _) in ms.items():
        out["by_method"][name] = {"rho": round(_spearman(score, agree), 4), "auc_unanimous": round(auc(un, score), 4),
                                  "flips": int(flips.sum()), "unanimous_flipped": int((flips & un).sum()),
                                  "unanimous_flipped_share": round(float((flips & un).sum() / un.sum()), 4)}
    out["estimated_noise"] = round(post.posterior.noise_rate, 4)
    out["noise_interval"] = post.summary().get("noise_interval")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sets", nargs="+", default=["hh", "pandalm"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--finetuned", type=int, default=0, help="Also train LoRA reward models on this many train "
                    "pairs per variant (0: off; slow on CPU).")
    ap.add_argument("--finetuned-steps", type=int, default=40)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is absent (the shared dev sets)")
    from prefdata import io
    from prefdata.annotators import pandalm
    from prefdata.curation.step import CleanLabelsConfig
    from prefdata.schema import validate

    cfg = CleanLabelsConfig()  # the shipped defaults
    tmp = Path(tempfile.mkdtemp())
    pl_raw, _ = pandalm(DATA / "pandalm_dev.jsonl.gz")
    tables = {"hh": io.read(str(DATA / "hh_harmless_dev.jsonl.gz"), "pair", on_error="quarantine",
                            quarantine_path=tmp / "hh-q.jsonl"),
              "pandalm": validate(pl_raw.to_pylist(), "pair", source="pandalm_dev.jsonl.gz", on_error="quarantine",
                                  quarantine_path=tmp / "pandalm-q.jsonl", normalise=io.normalise_row)}
    report = {"config": cfg.model_dump(), "runs": {}}
    for name in args.sets:
        for seed in args.seeds:
            t0 = time.time()
            r = {"injected": injected(tables[name], cfg, seed, finetuned=args.finetuned,
                                      finetuned_steps=args.finetuned_steps)}
            if name == "pandalm":
                r["agreement"] = agreement(tables[name], cfg, seed)
            r["seconds"] = round(time.time() - t0, 1)
            report["runs"][f"{name}/seed{seed}"] = r
            print(json.dumps({f"{name}/seed{seed}": r}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
