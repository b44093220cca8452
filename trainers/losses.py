"""Preference losses as pure tensor functions, one per variant, each registered with its record by `@loss`.

Notation (ALGORITHMS.md, "Losses the trainers need"): per pair,
    h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),   shape (b,)
Every DPO-family function takes h and keyword tensors of shape (b,) and returns the per-pair loss,
shape (b,); the caller takes the mean. Unused keywords are accepted (`**_`) so the trainer can call
any variant the same way. Metrics (accuracies, margins) are computed by the trainer, not here.

`DPO_LOSSES` is the one registry of the DPO family: name -> `LossSpec` (the function, the per-pair
columns it needs or reads when present, whether it looks at a reference model, TRL's name for it).
`trainers.dpo` takes the `loss` choices, their help text, the data checks and the dispatch from it,
so a new variant is one decorated function here (docs/CONTRIBUTING.md, "Adding a loss").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Per-pair columns a DPO-family loss may read from the dataset (`trainers.dpo` carries them through TRL).
PAIR_COLUMNS = ("label_prob", "margin")


@dataclass(frozen=True)
class LossSpec:
    """One DPO-family loss: what the trainer needs to know to check the data and call it."""

    name: str
    fn: Callable[..., torch.Tensor]
    summary: str  # one line for the `loss` field's help: the paper, the equation, what it reads
    needs: tuple[str, ...] = ()  # per-pair columns it requires (PAIR_COLUMNS); checked before training
    optional: tuple[str, ...] = ()  # per-pair columns it reads when the dataset has them (1.0 otherwise)
    reference_free: bool = False  # never looks at a reference model: none is loaded, no reference pass
    trl: str | None = None  # TRL's DPOConfig.loss_type of the same loss, so TRL checks its arguments
    defaults: dict = field(default_factory=dict)  # DPOTrainConfig defaults this loss changes, when not set


DPO_LOSSES: dict[str, LossSpec] = {}


def loss(name: str, *, summary: str, needs: tuple[str, ...] = (), optional: tuple[str, ...] = (),
         reference_free: bool = False, trl: str | None = None, defaults: dict | None = None):
    """Register the decorated function as the DPO-family loss `name` (see `LossSpec` for the rest)."""
    unknown = sorted((set(needs) | set(optional)) - set(PAIR_COLUMNS))
    if unknown:
        raise ValueError(f"loss '{name}': unknown per-pair columns {unknown} (known: {', '.join(PAIR_COLUMNS)})")

    def register(fn):
        if name in DPO_LOSSES:
            raise ValueError(f"loss '{name}' is registered twice")
        DPO_LOSSES[name] = LossSpec(name, fn, summary, tuple(needs), tuple(optional), reference_free, trl,
                                    dict(defaults or {}))
        return fn

    return register


def spec(name: str) -> LossSpec:
    """The record of the DPO-family loss `name`; an unknown name is a ConfigError listing the known ones."""
    try:
        return DPO_LOSSES[name]
    except KeyError:
        from prefdata.errors import ConfigError

        raise ConfigError(f"unknown DPO loss '{name}' (known: {', '.join(DPO_LOSSES)})") from None


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    return spec(name).fn


@loss("sigmoid", summary="DPO eq. 7", trl="sigmoid")
def sigmoid(h, *, beta, **_):
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta h)."""
    return -F.logsigmoid(beta * h)


@loss("ipo", summary="IPO eq. 17", trl="ipo")
def ipo(h, *, beta, chosen_logratio, rejected_logratio, chosen_len, rejected_len, **_):
    """IPO (Azar et al. 2023, eq. 17): (h' - 1/(2 tau))^2 with tau = beta. h' uses log-ratios averaged
    per completion token, as TRL does (agreed with the IPO authors), so beta means the same at any length."""
    h_tok = chosen_logratio / chosen_len.clamp(min=1) - rejected_logratio / rejected_len.clamp(min=1)
    return (h_tok - 1.0 / (2.0 * beta)) ** 2


@loss("robust", summary="rDPO eq. 8, global eps", trl="robust")
def robust(h, *, beta, label_smoothing, **_):
    """Robust DPO (Chowdhury et al. 2024, eq. 8), TRL's `robust`: an unbiased loss under a global
    label-flip rate eps = label_smoothing in [0, 0.5):
        [-(1-eps) log s(beta h) + eps log s(-beta h)] / (1 - 2 eps)."""
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


@loss("soft", summary="cDPO, per-pair label_prob", needs=("label_prob",))
def soft(h, *, beta, label_prob, **_):
    """Soft labels per pair (conservative DPO, Mitchell 2023, with eps = 1 - p per pair; the soft-label
    policy of Secrets of RLHF II): -[p log s(beta h) + (1 - p) log s(-beta h)], p = label_prob in [0, 1].
    p = 1 is DPO; p = 0 is DPO on the swapped pair; p = 0.5 has gradient beta (s(beta h) - 1/2), zero at
    h = 0 (the policy starts at the reference), so an undecided pair never pushes the policy."""
    return -(label_prob * F.logsigmoid(beta * h) + (1 - label_prob) * F.logsigmoid(-beta * h))


@loss("offset", summary="ODPO eq. 6, per-pair margin", needs=("margin",))
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


@loss("hinge", summary="SLiC-HF / RSO: max(0, 1 - beta h)", optional=("label_prob",), trl="hinge")
def hinge(h, *, beta, label_prob, **_):
    """Hinge (SLiC-HF, Zhao et al. 2023; RSO, Liu et al. 2023, eq. 9 with normalised likelihoods), TRL's
    `hinge`: max(0, 1 - beta h). With a soft label p per pair, each order is weighted by its probability,
    p max(0, 1 - beta h) + (1 - p) max(0, 1 + beta h): p = 1 is TRL's loss, and p = 0.5 has zero gradient
    while |beta h| < 1, so an undecided pair never pushes the policy."""
    return label_prob * F.relu(1 - beta * h) + (1 - label_prob) * F.relu(1 + beta * h)


@loss("simpo", summary="SimPO eq. 6: reference-free, length-normalised, target margin simpo_gamma",
      optional=("label_prob",), reference_free=True, defaults={"beta": 2.0})
def simpo(h, *, beta, gamma, chosen_logps, rejected_logps, chosen_len, rejected_len, label_prob, **_):
    """SimPO (Meng et al. 2024, eq. 6): -log s(beta (log pi(y_c|x)/|y_c| - log pi(y_r|x)/|y_r|) - gamma).
    Reference-free, so `h` is unused: the reward is the policy's mean token log-prob. gamma is the target
    margin (not divided by beta here; TRL's CPO `simpo` writes it as beta (d - gamma/beta), the same
    number). A soft label p mixes the two orders, each with its own margin:
        -[p log s(beta d - gamma) + (1 - p) log s(-beta d - gamma)],
    so p = 1 is SimPO and p = 0.5 is symmetric in d (zero gradient at d = 0). TRL's label_smoothing form
    instead keeps gamma on one side only, which pushes a tied pair towards d = gamma / beta."""
    d = chosen_logps / chosen_len.clamp(min=1) - rejected_logps / rejected_len.clamp(min=1)
    return -(label_prob * F.logsigmoid(beta * d - gamma) + (1 - label_prob) * F.logsigmoid(-beta * d - gamma))


def log_exp(r_chosen, r_rejected):
    """ColossalChat's reward loss log(1 + exp(r_r - r_c)), written out so a test can show it *is* the
    Bradley-Terry loss -log s(r_c - r_r) (softplus(x) = -log s(-x)); trainers use `bradley_terry`."""
    return torch.log1p(torch.exp(r_rejected - r_chosen))


def center_penalty(r_chosen, r_rejected, coefficient):
    """TRL's `center_rewards_coefficient` (Eisenstein et al. 2023): c * mean((r_c + r_r)^2), which keeps
    rewards centred on zero without changing their differences. A scalar."""
    return coefficient * torch.mean((r_chosen + r_rejected) ** 2)


# ----------------------------------------------------------------------------- ranking losses (many candidates)
# Shapes: B prompts, up to K candidates each, padded; `valid` (B, K) marks real candidates. `logps` are
# summed completion log-probs (B, K), `lengths` completion token counts (B, K), `rewards` the candidates'
# scores (B, K). Each returns the per-prompt loss (B,).


def _best_nll(logps, lengths, rewards, valid):
    """Mean token NLL of each prompt's highest-scored candidate (the SFT term of RRHF and PRO), (B,)."""
    best = rewards.masked_fill(~valid, float("-inf")).argmax(dim=1, keepdim=True)  # (B, 1)
    return -(logps.gather(1, best) / lengths.gather(1, best).clamp(min=1)).squeeze(1)


def rrhf(logps, lengths, rewards, valid, *, rank_weight=1.0, length_penalty=1.0, sft_weight=1.0):
    """RRHF (Yuan et al. 2023, eq. 2-4): p_i = log pi(y_i|x) / |y_i|^length_penalty;
    L_rank = sum_{r_i < r_j} max(0, p_i - p_j); L_ft = -log pi(y_best|x) / |y_best| (token mean);
    L = rank_weight * L_rank + sft_weight * L_ft. Equal scores make no ranked pair."""
    p = logps / lengths.clamp(min=1) ** length_penalty  # (B, K)
    worse = (rewards[:, :, None] < rewards[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, K, K): i < j
    rank = (F.relu(p[:, :, None] - p[:, None, :]) * worse).sum(dim=(1, 2))  # (B,)
    return rank_weight * rank + sft_weight * _best_nll(logps, lengths, rewards, valid)


def pro(logps, lengths, rewards, valid, *, sft_weight=0.05, reward_temperature=True):
    """PRO (Song et al. 2023): rank the candidates by reward, y^1 > y^2 > ... > y^n, and with
    s_i = log pi(y_i|x) / |y_i| sum the Plackett-Luce (InfoNCE) terms, dropping the best each round:
        L_PRO = -sum_{k=1}^{n-1} log [exp(s_k T_k^k) / sum_{i>=k} exp(s_i T_i^k)].
    With reward_temperature (the paper's dynamic temperature), T_i^k = 1 / (r_k - r_i) for i > k and
    T_k^k = min_{i>k} T_i^k; without, T = 1. A candidate scored equal to y^k is no negative for it and is
    left out of round k. L = L_PRO + sft_weight * L_SFT, L_SFT the best candidate's token-mean NLL."""
    s = logps / lengths.clamp(min=1)  # (B, K)
    gap = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): [k, i] = r_k - r_i
    neg = (gap > 0) & valid[:, :, None] & valid[:, None, :]  # i is strictly worse than k
    if reward_temperature:
        t_neg = torch.where(neg, 1.0 / gap.clamp(min=1e-12), torch.zeros_like(gap))  # (B, K, K)
        t_pos = torch.where(neg, t_neg, torch.full_like(gap, float("inf"))).amin(dim=2)  # (B, K): min_i T_i^k
    else:
        t_neg, t_pos = neg.to(s), torch.ones_like(s)
    has_neg = neg.any(dim=2)  # (B, K): round k exists only if something is worse than y^k
    t_pos = torch.where(has_neg, t_pos, torch.zeros_like(t_pos))
    pos = s * t_pos  # (B, K)
    neg_logits = torch.where(neg, s[:, None, :] * t_neg, torch.full_like(gap, float("-inf")))  # (B, K, K)
    denom = torch.logsumexp(torch.cat([pos[:, :, None], neg_logits], dim=2), dim=2)  # (B, K)
    rounds = torch.where(has_neg, denom - pos, torch.zeros_like(pos)).sum(dim=1)  # (B,)
    return rounds + sft_weight * _best_nll(logps, lengths, rewards, valid)


RANK_LOSSES = {"rrhf": rrhf, "pro": pro}
