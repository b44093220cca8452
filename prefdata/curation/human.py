"""Curation measured against human judgement: `prefdata eval agreement` and `prefdata eval gold`.

- agreement: data labelled by several annotators, with a column counting how many agreed. A vote
  that tracks human judgement is more confident where the annotators agreed: Spearman rho between
  the posterior log-odds and the agreement count, ROC-AUC for telling unanimous pairs from split ones,
  and the share of unanimous pairs the policy flips or drops (each one almost surely a harm).
  A pair that occurs on several rows (the same prompt, chosen and rejected, so the same id: PandaLM's
  test set has two models give identical answers 23 times) is one item: the voters and the policy
  can only give it one answer, and counting it twice would weigh it twice. Its rows' annotators are
  pooled: its agreement is the mean over its rows, unanimous only if every row was. The report says
  how many rows were merged.
- gold: a file of verified pairs. Accuracy of the posterior's label, the estimated against the true
  noise rate, and the calibration (ECE) of label_prob.

Every figure is printed beside the same figure for the length-only baseline (the longer, or shorter,
answer wins, whichever the labels favour) and for the voters without length control.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.curation import step as S
from prefdata.curation.noise import auc, flip_mask, length_only
from prefdata.curation.policies import describe_policy
from prefdata.curation.step import CleanLabelsConfig, curate, vote
from prefdata.curation.texts import match_gold
from prefdata.errors import DataError
from prefdata.schema import conform


class HumanEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    clean: CleanLabelsConfig = Field(default_factory=CleanLabelsConfig)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    # np.ptp, not np.std: the std of identical floats can round above 0 and spearmanr then warns
    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")


def _run(table: pa.Table, cfg: HumanEvalConfig, progress: bool):
    votes = S.collect_votes(  # through the module: patchable, never a stale binding
        table, cfg.clean, seed=cfg.seed, progress=progress)
    kept, dropped, result = curate(table, cfg.clean, votes=votes, progress=progress)
    raw = vote(table, votes, cfg.clean.model_copy(update={"length_control": False}))
    acted = flip_mask(table, kept)
    drops = np.isin(np.asarray(table.column("id").to_pylist()), dropped.column("id").to_pylist())
    return result, raw, acted, drops


def merge_repeated_pairs(table: pa.Table, agree: np.ndarray, column: str) -> tuple[pa.Table, np.ndarray, dict]:
    """One row per pair id (its first row, in file order), its agreement the mean over its rows, and
    what was merged: {"rows": rows merged into an earlier one, "pairs": pairs with several rows,
    "mixed": of those, pairs whose rows' agreement differed}. Rows sharing an id must be the same pair."""
    from prefdata.rewards.features import pair_texts

    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    _, first, inverse, counts = np.unique(ids.astype(str), return_index=True, return_inverse=True, return_counts=True)
    if (counts == 1).all():
        return table, agree, {"rows": 0, "pairs": 0, "mixed": 0}
    # The id is the content hash unless the file gave its own ids: then check the content matches.
    t = pair_texts(table)
    keys = (t["p"] + "\x1e" + t["c"] + "\x1e" + t["r"]).to_numpy()
    other = np.flatnonzero(keys != keys[first[inverse]])
    if other.size:
        i = int(other[0])
        raise DataError(f"id '{ids[i]}' names two different pairs (rows {int(first[inverse[i]]) + 1} and {i + 1})",
                        row=i + 1, field="id")
    total = np.bincount(inverse, weights=agree)
    lo = np.full(len(first), np.inf)
    hi = np.full(len(first), -np.inf)
    np.minimum.at(lo, inverse, agree)
    np.maximum.at(hi, inverse, agree)
    order = np.sort(first)  # file order of each pair's first row
    pair_of_row = inverse[order]
    merged = {"rows": int(len(ids) - len(first)), "pairs": int((counts > 1).sum()),
              "mixed": int(((counts > 1) & (lo != hi)).sum())}
    return table.take(order), (total / counts)[pair_of_row], merged


def run_agreement(table: pa.Table, column: str, cfg: HumanEvalConfig, progress: bool = True) -> dict:
    table = conform(table, "pair")
    if column not in table.column_names:
        raise DataError(f"agreement column '{column}' is not in the dataset", field=column)
    agree = np.asarray(table.column(column).to_pylist(), dtype=object)
    bad = [i for i, v in enumerate(agree) if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v]
    if bad:
        raise DataError("agreement must be a number", row=bad[0] + 1, field=column)
    agree = agree.astype(np.float64)
    top = agree.max()
    rows = table.num_rows
    table, agree, repeats = merge_repeated_pairs(table, agree, column)
    unanimous = agree == top
    result, raw, flips, drops = _run(table, cfg, progress)
    from prefdata.curation.baselines import scores as baseline_scores

    scores = {"posterior": result.posterior.log_odds, "no length control": raw.posterior.log_odds,
              "length only": length_only(result.ell), **baseline_scores(result.controlled, result.families)}
    by_score = {k: {"spearman_rho": round(_spearman(s, agree), 4),
                    "auc_unanimous_vs_split": round(auc(unanimous, s), 4)} for k, s in scores.items()}
    n_u = int(unanimous.sum())
    summary = result.summary()
    return {"verdict": summary.get("verdict", "the voters can judge single labels"), "can_judge": summary["can_judge"],
            "pairs": table.num_rows, "rows": rows, "repeated": repeats, "unanimous": n_u,
            "split": int((~unanimous).sum()), "by_score": by_score,
            "policy": cfg.clean.policy.model_dump(exclude_defaults=True),
            "unanimous_flipped": int((flips & unanimous).sum()), "unanimous_dropped": int((drops & unanimous).sum()),
            "unanimous_flipped_share": round(float((flips & unanimous).sum() / max(n_u, 1)), 4),
            "split_flipped": int((flips & ~unanimous).sum()), "posterior": summary}


def gold_from_column(table: pa.Table, column: str) -> np.ndarray:
    """1 / 0 / NaN per pair from a dataset column (the stored label verified right / wrong / unknown)."""
    import polars as pl

    if column not in table.column_names:
        raise DataError(f"gold column '{column}' is not in the dataset", field=column)
    g = pl.from_arrow(table.select([column])).to_series().cast(pl.Float64, strict=False).to_numpy().astype(np.float64)
    bad = np.flatnonzero(np.isfinite(g) & (g != 0) & (g != 1))
    if bad.size:
        raise DataError("a gold value must be 1, 0 or empty", row=int(bad[0]) + 1, field=column)
    return g


def run_gold(table: pa.Table, gold: pa.Table | None, cfg: HumanEvalConfig, progress: bool = True,
             gold_column: str | None = None) -> dict:
    """`gold`: verified pairs matched by text; or `gold_column`: 1/0/null in the dataset itself."""
    from prefdata.curation.baselines import compare, remedies
    from prefdata.curation.posterior import ece

    table = conform(table, "pair")
    g = gold_from_column(table, gold_column) if gold_column else match_gold(table, conform(gold, "pair"))
    known = np.isfinite(g)
    if known.sum() == 0:
        raise DataError("no pair of the dataset is in the gold file (pairs match by prompt and both answers)")
    result, raw, flips, drops = _run(table, cfg, progress)
    y = g[known]

    def figures(lp: np.ndarray) -> dict:
        return {"accuracy": round(float(((lp[known] >= 0.5) == (y == 1)).mean()), 4),
                "ece": round(ece(lp[known], y), 4), "auc_wrong_labels": round(auc(y == 0, -lp[known]), 4)}

    from prefdata.curation.posterior import _sigmoid

    ell = length_only(result.ell)
    summary = result.summary()
    cut = cfg.clean.policy.flip_max_prob if cfg.clean.policy.flip_max_prob is not None else 0.1
    lo_, hi_ = result.posterior.extra.get("noise_interval", (np.nan, np.nan))
    true_rate = float((y == 0).mean())
    return {"verdict": summary.get("verdict", "the voters can judge single labels"),
            "can_judge": summary["can_judge"], "separation": summary["separation"],
            "baselines_auc_wrong_labels": compare(result.controlled[known], result.families,
                                                  result.posterior.log_odds[known], y == 0, auc),
            "remedies_at_cut": {"cut": cut, **remedies(result.posterior.label_prob[known], y == 1, cut, result.posterior.can_judge)},
            "noise_interval_covers_truth": bool(lo_ <= true_rate <= hi_),
            "pairs": table.num_rows, "matched": int(known.sum()), "true_noise_rate": round(float((y == 0).mean()), 4),
            "estimated_noise_rate": round(result.posterior.noise_rate, 4),
            "noise_interval": [round(x, 4) for x in result.posterior.extra.get("noise_interval", (np.nan, np.nan))],
            "posterior": figures(result.posterior.label_prob),
            "no length control": figures(raw.posterior.label_prob),
            "length only": {"auc_wrong_labels": round(auc(y == 0, -ell[known]), 4),
                            "accuracy": round(float(((_sigmoid(ell[known]) >= 0.5) == (y == 1)).mean()), 4)},
            "stored labels": {"accuracy": round(float(y.mean()), 4)},
            "policy": cfg.clean.policy.model_dump(exclude_defaults=True),
            "policy_flips_right": int((flips[known] & (y == 0)).sum()), "policy_flips_wrong": int((flips[known] & (y == 1)).sum()),
            "policy_drops": int(drops[known].sum()), "families": summary["families"]}


def _rho_note(by_score: dict) -> str:
    """One plain sentence when a correlation is undefined or zero (a constant score, or no signal)."""
    dead = [k for k, v in by_score.items() if not (abs(v["spearman_rho"]) > 1e-9)]
    if not dead:
        return ""
    return (f"\n\n{', '.join(dead)}: rho is 0 or undefined: the score is the same for every pair (or does not move "
            "with agreement at all), so it says nothing about which pairs the annotators split on.")


def format_agreement(r: dict) -> str:
    rows = "\n".join(f"| {k} | {v['spearman_rho']:+.3f} | {v['auc_unanimous_vs_split']:.3f} |" for k, v in r["by_score"].items())
    rep = r.get("repeated") or {}
    merged = (f"; {rep['rows']} of {r['rows']} rows repeat an earlier row's pair and were merged into it "
              f"({rep['pairs']} pairs, annotators pooled: agreement is the mean of the rows, "
              f"{rep['mixed']} with rows that differ)" if rep.get("rows") else "")
    head = "" if r.get("can_judge", True) else f"CANNOT JUDGE: {r['verdict']}\n"
    return (f"{head}pairs {r['pairs']} (unanimous {r['unanimous']}, split {r['split']}){merged}\n\n"
            f"| score | Spearman rho with agreement | AUC unanimous vs split |\n|---|---|---|\n{rows}"
            f"{_rho_note(r['by_score'])}\n\n"
            f"{describe_policy(r['policy'])}: flipped {r['unanimous_flipped']} unanimous pairs "
            f"({r['unanimous_flipped_share']:.1%}), dropped {r['unanimous_dropped']}; flipped {r['split_flipped']} split pairs")


def format_gold(r: dict) -> str:
    rows = "\n".join(f"| {k} | {r[k].get('accuracy', float('nan')):.3f} | {r[k].get('ece', float('nan')):.3f} | "
                     f"{r[k].get('auc_wrong_labels', float('nan')):.3f} |"
                     for k in ("posterior", "no length control", "length only", "stored labels"))
    lo, hi = r["noise_interval"]
    base = r.get("baselines_auc_wrong_labels", {})
    brows = "\n".join(f"| {k} | {v:.3f} |" for k, v in base.items() if isinstance(v, float))
    rem = r.get("remedies_at_cut", {})
    fl = rem.get("flip", {})
    fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    remedy = (f"\n\nat the flip cut {rem.get('cut')}: flips {fl.get('acted')} (precision {fmt(fl.get('precision'))}, "
              f"recall {fmt(fl.get('recall'))}); label accuracy stored {fmt(rem['stored']['label_accuracy'])}, "
              f"after flipping {fmt(fl.get('label_accuracy'))}, after dropping the doubted "
              f"{fmt(rem['drop']['label_accuracy'])} on {rem['drop']['pairs']} pairs, soft labels "
              f"{fmt(rem['soft']['label_accuracy'])}" if rem else "")
    fams = "\n".join(f"| {f} | {v['kind']} | {v['accuracy']:.3f} ({v['accuracy_interval'][0]:.2f}–{v['accuracy_interval'][1]:.2f}) | "
                      f"{v['weight']:+.2f} | {v['voted']:.0%} | {v['ties']:.0%} |" for f, v in r.get("families", {}).items())
    head = ("" if r.get("can_judge", True) else f"CANNOT JUDGE: {r['verdict']}\n")
    if r["true_noise_rate"] in (0, 1):
        head += ("every matched gold pair says the stored label is " + ("right" if r["true_noise_rate"] == 0 else "wrong")
                 + ": ROC-AUC and precision are undefined (nan, —); accuracy and ECE still hold\n")
    noise = (f"noise rate: estimated {r['estimated_noise_rate']:.3f} (90% interval {lo:.3f} – {hi:.3f}), "
             if r.get("can_judge", True) else f"noise rate: unknown (90% interval {lo:.3f} – {hi:.3f}), ")
    return (f"{head}pairs {r['pairs']}, matched to gold {r['matched']}\n"
            f"{noise}true {r['true_noise_rate']:.3f}\n\n"
            f"| family | kind | accuracy (90% interval) | weight | voted | ties |\n|---|---|---|---|---|---|\n{fams}\n\n"
            f"| ROC-AUC for finding wrong labels | |\n|---|---|\n{brows}\n"
            f"(best single family in hindsight: {base.get('best single family is', '—')}){remedy}\n\n"
            f"| labels from | accuracy vs gold | ECE | AUC for wrong labels |\n|---|---|---|---|\n{rows}\n\n"
            f"{describe_policy(r['policy'])}: flips that fixed a label {r['policy_flips_right']}, flips that broke one "
            f"{r['policy_flips_wrong']}, drops {r['policy_drops']}")
