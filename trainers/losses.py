"""Preference losses as pure tensor functions, one per variant, chosen by name from `DPO_LOSSES`.

Notation (ALGORITHMS.md, "Losses the trainers need"): per pair,
    h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),   shape (b,)
Every DPO-family function takes h and keyword tensors of shape (b,) and returns the per-pair loss,
shape (b,); the caller takes the mean. Unused keywords are accepted (`**_`) so the trainer can call
any variant the same way. Metrics (accuracies, margins) are computed by the trainer, not here.
"""

from __future__ import annotations

import torch.nn.functional as F


def sigmoid(h, *, beta, **_):
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta h)."""
    return -F.logsigmoid(beta * h)


def ipo(h, *, beta, chosen_logratio, rejected_logratio, chosen_len, rejected_len, **_):
    """IPO (Azar et al. 2023, eq. 17): (h' - 1/(2 tau))^2 with tau = beta. h' uses log-ratios averaged
    per completion token, as TRL does (agreed with the IPO authors), so beta means the same at any length."""
    h_tok = chosen_logratio / chosen_len.clamp(min=1) - rejected_logratio / rejected_len.clamp(min=1)
    return (h_tok - 1.0 / (2.0 * beta)) ** 2


def robust(h, *, beta, label_smoothing, **_):
    """Robust DPO (Chowdhury et al. 2024, eq. 8), TRL's `robust`: an unbiased loss under a global
    label-flip rate eps = label_smoothing in [0, 0.5):
        [-(1-eps) log s(beta h) + eps log s(-beta h)] / (1 - 2 eps)."""
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def soft(h, *, beta, label_prob, **_):
    """Soft labels per pair (conservative DPO, Mitchell 2023, with eps = 1 - p per pair; the soft-label
    policy of Secrets of RLHF II): -[p log s(beta h) + (1 - p) log s(-beta h)], p = label_prob in [0, 1].
    p = 1 is DPO; p = 0 is DPO on the swapped pair; p = 0.5 has gradient beta (s(beta h) - 1/2), zero at
    h = 0 (the policy starts at the reference), so an undecided pair never pushes the policy."""
    return -(label_prob * F.logsigmoid(beta * h) + (1 - label_prob) * F.logsigmoid(-beta * h))


def offset(h, *, beta, margin, alpha=1.0, **_):
    """ODPO (Amini et al. 2024, eq. 6): -log sigmoid(beta h - alpha * delta), delta the per-pair offset
    (`margin`, or log(s_c - s_r) from the response scores). alpha is not multiplied by beta."""
    return -F.logsigmoid(beta * h - alpha * margin)


def bradley_terry(r_chosen, r_rejected, *, margin=None, label_prob=None):
    """Reward-model loss (Bradley-Terry; Llama 2's margin term, Touvron et al. 2023, eq. 2):
    -log s(r_c - r_r - m); with a soft label p it takes the two-term cDPO form
    -[p log s(d) + (1 - p) log s(-d)], d = r_c - r_r - m. p = 1 (or None) is TRL's RewardTrainer loss."""
    d = r_chosen - r_rejected - (margin if margin is not None else 0.0)
    if label_prob is None:
        return -F.logsigmoid(d)
    return -(label_prob * F.logsigmoid(d) + (1 - label_prob) * F.logsigmoid(-d))


DPO_LOSSES = {"sigmoid": sigmoid, "ipo": ipo, "robust": robust, "soft": soft, "offset": offset}

# Per-pair columns each variant reads; the trainer checks the dataset has them before training.
NEEDS = {"sigmoid": (), "ipo": (), "robust": (), "soft": ("label_prob",), "offset": ("margin",)}


def get_loss(name: str):
    try:
        return DPO_LOSSES[name]
    except KeyError:
        from prefdata.errors import ConfigError

        raise ConfigError(f"unknown DPO loss '{name}' (known: {', '.join(DPO_LOSSES)})") from None

