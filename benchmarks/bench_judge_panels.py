"""Curation with real judge verdicts: the LLMBar CaseStudy panels of judge_panels_dev.jsonl.gz.

    python benchmarks/bench_judge_panels.py ../shared/data/judge_panels_dev.jsonl.gz --seeds 0 1 2

Per subset and seed: the gold-better output is chosen, 20% of the labels are flipped (the verdict
columns turn with them), and `clean_labels` runs with column families, exactly as a user would
configure them: `{type: column, family: JUDGE, columns: [...], kind: verdict}`, one family per judge
holding its five prompt strategies in both orders (10 columns), or (`--grouping strategy`) one family
per judge and strategy (2 columns). Printed beside the posterior, on the same pairs: the plain binary
Dawid-Skene fit, majority vote and the best single judge in hindsight; precision and recall of the
flips at the shipped cut (posterior <= 0.1); the estimated noise rate with its 90% interval against the
truth; and flip vs drop vs soft label.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import numpy as np
import pyarrow as pa

from prefdata.curation.baselines import compare, remedies
from prefdata.curation.noise import auc, swap
from prefdata.curation.step import CleanLabelsConfig, column_specs, curate
from prefdata.schema import validate

SUBSETS = ("Normal", "Constraint", "Negation", "Base_9", "Base_10")
ORDERS = {"shown_in_order": "ab", "shown_swapped": "ba"}


def panel(rows: list[dict], grouping: str) -> tuple[pa.Table, CleanLabelsConfig]:
    """Pairs with one verdict column per judge, strategy and order (+1: chosen is better)."""
    keys = sorted(rows[0]["judges"])
    out = []
    for r in rows:
        g = r["gold"]
        row = {"id": r["id"], "prompt": r["instruction"], "chosen": r[f"output_{g}"], "rejected": r[f"output_{3 - g}"],
               "subset": r["source"].split("/")[-1]}
        for k in keys:
            for o, tag in ORDERS.items():
                w = r["judges"][k][o]
                row[f"{k}/{tag}"] = None if w is None else (1 if w == g else -1)
        out.append(row)
    table = validate(out, "pair", source="judge_panels")
    families: dict[str, list[str]] = {}
    for k in keys:
        fam = k.split("/")[0] if grouping == "judge" else k
        families.setdefault(fam, []).extend(f"{k}/{tag}" for tag in ORDERS.values())
    cfg = CleanLabelsConfig(voters=[{"type": "column", "family": f.replace(":", "-"), "columns": c, "kind": "verdict"}
                                    for f, c in families.items()])
    return table, cfg


def run(path: str, seeds: list[int], grouping: str, inject: float, pooled: str | None = None) -> dict:
    """Per subset; or `pooled` ("plain" or "group_by") all five subsets as one dataset, fitted as one or
    with `group_by: subset` (one posterior per subset)."""
    rows = [json.loads(x) for x in gzip.open(path, "rt", encoding="utf-8")]
    res = {}
    for sub in (SUBSETS if pooled is None else ["pooled"]):
        rs = [r for r in rows if r["source"] == f"llmbar-casestudy/{sub}" or (pooled and r["source"].startswith("llmbar"))]
        table, cfg = panel(rs, grouping)
        if pooled == "group_by":
            cfg = cfg.model_copy(update={"group_by": "subset"})
        for seed in seeds:
            rng = np.random.default_rng(seed)
            n = table.num_rows
            injected = np.zeros(n, bool)
            injected[rng.choice(n, int(round(inject * n)), replace=False)] = True
            noisy = swap(table, injected, column_specs(cfg))
            t = time.perf_counter()
            kept, dropped, result = curate(noisy, cfg, progress=False)
            secs = time.perf_counter() - t
            post = result.posterior
            base = compare(result.controlled, result.families, post.log_odds, injected, auc)
            rem = remedies(post.label_prob, ~injected, cfg.policy.flip_max_prob, post.can_judge)
            lo, hi = post.extra["noise_interval"]
            res[(sub, seed)] = {"auc": base["posterior"], "ds": base["dawid-skene (binary)"],
                                "majority": base["majority vote"], "best": base["best single family (hindsight)"],
                                "flips": rem["flip"]["acted"], "flips_right": round((rem["flip"]["precision"] or 0) * rem["flip"]["acted"]),
                                "recall": rem["flip"]["recall"], "noise": post.noise_rate, "true": float(injected.mean()),
                                "covered": lo <= injected.mean() <= hi, "interval": (lo, hi), "can_judge": post.can_judge,
                                "acc_stored": rem["stored"]["label_accuracy"], "acc_flip": rem["flip"]["label_accuracy"],
                                "acc_drop": rem["drop"]["label_accuracy"], "kept_drop": rem["drop"]["kept_share"],
                                "acc_soft": rem["soft"]["label_accuracy"], "seconds": secs}
    return res


def report(res: dict, grouping: str) -> str:
    subsets = sorted({s for s, _ in res}, key=lambda s: (s not in SUBSETS, SUBSETS.index(s) if s in SUBSETS else 0))
    lines = [f"grouping: one family per {grouping}", "",
             "| subset | posterior AUC | binary DS | majority | best judge (hindsight) | flips (right) | noise est (90% int.) | true |",
             "|---|---|---|---|---|---|---|---|"]
    for sub in subsets:
        rs = [v for (s, _), v in res.items() if s == sub]
        m = lambda k: float(np.mean([r[k] for r in rs]))  # noqa: E731
        lines.append(f"| {sub} | {m('auc'):.3f} | {m('ds'):.3f} | {m('majority'):.3f} | {m('best'):.3f} | "
                     f"{sum(r['flips'] for r in rs)} ({sum(r['flips_right'] for r in rs)}) | {m('noise'):.3f} "
                     f"({np.mean([r['interval'][0] for r in rs]):.3f}-{np.mean([r['interval'][1] for r in rs]):.3f}) | {m('true'):.3f} |")
    allr = list(res.values())
    m = lambda k: float(np.mean([r[k] for r in allr]))  # noqa: E731
    flips = sum(r["flips"] for r in allr)
    right = sum(r["flips_right"] for r in allr)
    below = [s for s in subsets if np.mean([v["auc"] for (x, _), v in res.items() if x == s])
             < np.mean([v["ds"] for (x, _), v in res.items() if x == s])]
    lines += ["", f"mean ROC-AUC: posterior {m('auc'):.3f}, binary Dawid-Skene {m('ds'):.3f}, majority {m('majority'):.3f}, "
              f"best judge in hindsight {m('best'):.3f}; subsets where the posterior is below Dawid-Skene: {below or 'none'}",
              f"flips at posterior <= 0.1: {flips}, right {right} (precision {right / max(flips, 1):.3f}), mean recall "
              f"{np.mean([r['recall'] or 0 for r in allr]):.3f}",
              f"noise rate: mean |estimate - truth| {np.mean([abs(r['noise'] - r['true']) for r in allr]):.3f}; "
              f"90% interval covered the truth in {sum(r['covered'] for r in allr)} of {len(allr)} runs",
              f"label accuracy: stored {m('acc_stored'):.3f}, after flipping {m('acc_flip'):.3f}, after dropping "
              f"the doubted {m('acc_drop'):.3f} (keeping {m('kept_drop'):.0%}), soft labels {m('acc_soft'):.3f}",
              f"'cannot judge' verdicts: {sum(not r['can_judge'] for r in allr)} of {len(allr)}; "
              f"mean fit time {m('seconds'):.2f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--grouping", choices=["judge", "strategy"], default="judge")
    ap.add_argument("--inject", type=float, default=0.2)
    ap.add_argument("--pooled", choices=["plain", "group_by"], default=None,
                    help="All five subsets as one dataset, one fit (plain) or one per subset (group_by).")
    a = ap.parse_args()
    print(report(run(a.path, a.seeds, a.grouping, a.inject, a.pooled), a.grouping))
