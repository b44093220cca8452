"""Preference losses as pure tensor functions, one per variant, chosen by name.

Notation (ALGORITHMS.md "Losses"): h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),
per pair, shape (b,). Each function returns the per-pair loss, shape (b,); callers take the mean.
Metrics are computed elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid(h, *, beta, **_):
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * h)."""
    return -F.logsigmoid(beta * h)


def ipo(h, *, beta, chosen_logratio, rejected_logratio, chosen_len, rejected_len, **_):
    """IPO (Azar et al. 2023): (h' - 1/(2 tau))^2 with tau = beta, where h' uses log-ratios averaged per
    completion token (TRL's normalisation, so beta is comparable across lengths)."""
    hn = chosen_logratio / chosen_len.clamp(min=1) - rejected_logratio / rejected_len.clamp(min=1)
    return (hn - 1.0 / (2.0 * beta)) ** 2


def robust(h, *, beta, label_smoothing, **_):
    """Robust DPO (Chowdhury et al. 2024), TRL's `robust`: unbiased under label-flip rate eps."""
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def soft(h, *, beta, label_prob, **_):
    """Per-pair soft label p (cDPO with eps = 1 - p): -[p log s(beta h) + (1-p) log s(-beta h)].
    p = 0.5 gives zero gradient at h = 0 (where training starts) and otherwise only pulls h back to 0;
    p = 0 is DPO on the swapped pair."""
    return -(label_prob * F.logsigmoid(beta * h) + (1 - label_prob) * F.logsigmoid(-beta * h))


def offset(h, *, beta, margin, **_):
    """ODPO (Amini et al. 2024): -log sigmoid(beta * h - delta), delta the per-pair offset (`margin`),
    not multiplied by beta."""
    return -F.logsigmoid(beta * h - margin)


def bradley_terry(r_chosen, r_rejected, *, margin=None, label_prob=None):
    """Reward-model loss: -log sigmoid(r_c - r_r - m), soft-labelled as in cDPO when label_prob is given."""
    d = r_chosen - r_rejected - (margin if margin is not None else 0.0)
    if label_prob is None:
        return -F.logsigmoid(d)
    return -(label_prob * F.logsigmoid(d) + (1 - label_prob) * F.logsigmoid(-d))


DPO_LOSSES = {"sigmoid": sigmoid, "ipo": ipo, "robust": robust, "soft": soft, "offset": offset}
