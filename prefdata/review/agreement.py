"""Chance-corrected agreement between annotators, vectorised over pairs.

Two annotators: Cohen's kappa on the pairs both labelled. Three or more: Fleiss' kappa in its form
for a varying number of raters per item (each pair labelled by at least two counts), since with an
overlap below the number of annotators no pair is seen by everyone. Categories are the labels
(keep, flip, tie, drop); a skip is "not mine to say" and is left out.
"""

from __future__ import annotations

import numpy as np


def cohen_kappa(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Cohen's kappa of two raters' category indices (0..k-1) on the same items."""
    n = len(a)
    if n == 0:
        return float("nan")
    conf = np.zeros((k, k))
    np.add.at(conf, (a, b), 1)
    po = np.trace(conf) / n
    pe = float(conf.sum(1) @ conf.sum(0)) / n ** 2
    # Both raters always using one and the same category: kappa is 0/0; report it as undefined.
    return float("nan") if pe >= 1.0 else float((po - pe) / (1.0 - pe))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an (items, categories) matrix of how many raters chose each category;
    items may have different rater counts (>= 2 each)."""
    counts = np.asarray(counts, dtype=float)
    n_i = counts.sum(1)
    counts = counts[n_i >= 2]
    n_i = n_i[n_i >= 2]
    if len(counts) == 0:
        return float("nan")
    p_i = ((counts ** 2).sum(1) - n_i) / (n_i * (n_i - 1))
    p_j = counts.sum(0) / n_i.sum()
    pe = float((p_j ** 2).sum())
    return float("nan") if pe >= 1.0 else float((p_i.mean() - pe) / (1.0 - pe))


def annotator_agreement(pair_ids: list[str], annotators: list[str], labels: list[str],
                        categories: tuple[str, ...]) -> dict:
    """Kappa (Cohen for 2 annotators, Fleiss for more) and raw agreement on the pairs labelled by
    two or more people. Inputs are parallel lists, one entry per (pair, annotator) label."""
    out = {"annotators": sorted(set(annotators)), "method": None, "kappa": None, "pairs": 0, "raw_agreement": None}
    if len(out["annotators"]) < 2 or not pair_ids:
        return out
    pu, pi = np.unique(np.asarray(pair_ids, dtype=str), return_inverse=True)
    au, ai = np.unique(np.asarray(annotators, dtype=str), return_inverse=True)
    ci = np.array([categories.index(x) for x in labels])
    k = len(categories)
    counts = np.zeros((len(pu), k))
    np.add.at(counts, (pi, ci), 1)
    shared = counts.sum(1) >= 2
    out["pairs"] = int(shared.sum())
    if not shared.any():
        return out
    # Raw agreement: the share of rater pairs on an item that chose the same category.
    c, n = counts[shared], counts[shared].sum(1)
    out["raw_agreement"] = round(float((((c ** 2).sum(1) - n) / (n * (n - 1))).mean()), 4)
    if len(au) == 2:
        grid = np.full((len(pu), 2), -1)
        grid[pi, ai] = ci
        both = (grid >= 0).all(1)
        kappa, out["method"] = cohen_kappa(grid[both, 0], grid[both, 1], k), "Cohen's kappa"
    else:
        kappa, out["method"] = fleiss_kappa(counts), "Fleiss' kappa"
    out["kappa"] = None if np.isnan(kappa) else round(kappa, 4)
    return out
