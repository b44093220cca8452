"""What a user would try instead of the posterior, on the same family votes, and the three remedies.

Every score here is in label orientation (higher: the stored label is more likely right), from the
(n, F) family votes `Vote.controlled` (NaN where a family did not vote):
- `majority`: the families' signs summed (a tie of families is 0), the label breaking no ties;
- each single family's own vote;
- `dawid-skene (binary)`: the plain two-coin model (Dawid and Skene 1979) on each family's sign, the
  stored label as the class prior, started from the labels; ties and missing votes are skipped.

`remedies` compares flipping, dropping and soft labels against known truth, the protocol of
PrefCleanBench (arXiv 2509.23564), which found dropping pairs the judges doubt often beats flipping.
"""

from __future__ import annotations

import numpy as np

from prefdata.curation.posterior import _logit, _sigmoid


def binary_dawid_skene(votes: np.ndarray, alpha0: float = 0.8, iters: int = 200) -> np.ndarray:
    """Log-odds that each label is right under the plain binary two-coin model on the votes' signs."""
    sgn = np.sign(np.where(np.isfinite(votes), votes, 0.0))
    pos, neg = sgn > 0, sgn < 0
    seen = pos | neg
    q = np.full(votes.shape[0], alpha0)
    lo = np.full(votes.shape[0], _logit(alpha0))
    for _ in range(iters):
        alpha = float(np.clip(q.mean(), 0.5, 0.999))
        a = ((q[:, None] * pos).sum(0) + 1) / ((q[:, None] * seen).sum(0) + 2)  # P(vote + | right)
        b = (((1 - q)[:, None] * neg).sum(0) + 1) / (((1 - q)[:, None] * seen).sum(0) + 2)  # P(vote - | wrong)
        llr = np.where(pos, np.log(a) - np.log1p(-b), 0.0) + np.where(neg, np.log1p(-a) - np.log(b), 0.0)
        new = _logit(alpha) + llr.sum(1)
        q_new = _sigmoid(new)
        done = np.max(np.abs(q_new - q), initial=0.0) < 1e-7
        q, lo = q_new, new
        if done:
            break
    return lo


def scores(votes: np.ndarray, families: list[str]) -> dict[str, np.ndarray]:
    """{baseline: (n,) score in label orientation}: majority, Dawid-Skene, and each family alone."""
    v = np.where(np.isfinite(votes), votes, 0.0)
    out = {"majority vote": np.sign(v).sum(1), "dawid-skene (binary)": binary_dawid_skene(votes)}
    for i, f in enumerate(families):
        out[f"family {f}"] = v[:, i]
    return out


def remedies(label_prob: np.ndarray, right: np.ndarray, cut: float, can_judge: bool = True) -> dict:
    """Flip vs drop vs soft label, against the truth (`right`: 1 where the stored label is right).

    - flip: labels with posterior <= cut are reversed; precision and recall of those flips;
    - drop: the same pairs, and the ambiguous ones (posterior < 0.5), are removed; label accuracy of
      what is kept;
    - soft: every pair kept with its posterior as a soft label; the expected share of preference mass
      on the truly better answer.
    With `can_judge` false the policy acts on nothing (`step.acting_policy`), and so does this."""
    right = np.asarray(right, bool)
    wrong = ~right
    act = np.full(right.size, can_judge)  # voters that cannot judge change and drop nothing
    flip = (label_prob <= cut) & act
    after = np.where(flip, wrong, right)
    keep = (label_prob >= 0.5) | ~act
    soft = np.where(act, np.where(right, label_prob, 1 - label_prob), right.astype(float))
    n = max(right.size, 1)
    return {
        "stored": {"label_accuracy": round(float(right.mean()), 4), "pairs": int(right.size)},
        "flip": {"acted": int(flip.sum()), "precision": round(float(wrong[flip].mean()), 4) if flip.any() else None,
                 "recall": round(float(flip[wrong].mean()), 4) if wrong.any() else None,
                 "label_accuracy": round(float(after.mean()), 4), "pairs": int(right.size)},
        "drop": {"acted": int((~keep).sum()), "label_accuracy": round(float(right[keep].mean()), 4) if keep.any() else None,
                 "pairs": int(keep.sum()), "kept_share": round(float(keep.sum() / n), 4)},
        "soft": {"label_accuracy": round(float(soft.mean()), 4), "pairs": int(right.size)},
    }


def compare(votes: np.ndarray, families: list[str], log_odds: np.ndarray, wrong: np.ndarray, auc) -> dict:
    """ROC-AUC for finding the wrong labels: the posterior beside each baseline, and the best single
    family in hindsight (chosen with the truth, so an upper bound no user could pick in advance)."""
    table = {"posterior": round(auc(wrong, -log_odds), 4)}
    for k, s in scores(votes, families).items():
        table[k] = round(auc(wrong, -s), 4)
    fam = {k: v for k, v in table.items() if k.startswith("family ")}
    if fam:
        best = max(fam, key=lambda k: (np.nan_to_num(fam[k], nan=-1), k))
        table["best single family (hindsight)"] = fam[best]
        table["best single family is"] = best.removeprefix("family ")
    return table
