"""The new losses against hand-computed numbers and TRL: SimPO and hinge (DPO family), RRHF and PRO
(ranking over many candidates), the centring penalty, and ColossalChat's log-exp identity."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainers import losses


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def trl_cpo_loss(loss_type, chosen, rejected, *, beta, gamma=0.5, label_smoothing=0.0):
    """TRL's own CPO loss (simpo / hinge) called on our tensors: it only reads these attributes."""
    from trl.experimental.cpo import CPOTrainer

    me = SimpleNamespace(alpha=0.0, loss_type=loss_type, simpo_gamma=gamma, beta=beta,
                         label_smoothing=label_smoothing, accelerator=SimpleNamespace(device="cpu"))
    return CPOTrainer.cpo_loss(me, chosen, rejected)[0]


# ----------------------------------------------------------------------------- SimPO


def test_simpo_by_hand():
    # mean log-probs -3/3 = -1 and -6/2 = -3: d = 2; beta d - gamma = 4 - 0.5 -> -log s(3.5)
    got = losses.simpo(None, beta=2.0, gamma=0.5, chosen_logps=t(-3.0), rejected_logps=t(-6.0), chosen_len=t(3.0),
                       rejected_len=t(2.0), label_prob=t(1.0)).item()
    assert got == pytest.approx(math.log1p(math.exp(-3.5)), abs=1e-12)


def test_simpo_equals_trl_cpo_simpo():
    g = torch.Generator().manual_seed(0)
    lc, lr = -torch.rand(6, generator=g, dtype=torch.float64) * 20, -torch.rand(6, generator=g, dtype=torch.float64) * 20
    nc, nr = t(3, 5, 7, 2, 9, 4), t(4, 4, 1, 8, 3, 6)
    ours = losses.simpo(None, beta=2.0, gamma=0.7, chosen_logps=lc, rejected_logps=lr, chosen_len=nc,
                        rejected_len=nr, label_prob=torch.ones(6, dtype=torch.float64))
    theirs = trl_cpo_loss("simpo", lc / nc, lr / nr, beta=2.0, gamma=0.7)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert ours.std() > 1e-3  # the pairs differ, so the comparison is not one number six times


def test_simpo_soft_label_half_is_symmetric_and_zero_is_the_swap():
    kw = {"beta": 2.0, "gamma": 0.5, "chosen_len": t(2.0), "rejected_len": t(2.0)}
    d = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    losses.simpo(None, chosen_logps=d, rejected_logps=torch.zeros(1, dtype=torch.float64), label_prob=t(0.5),
                 **kw).sum().backward()
    assert d.grad.item() == 0.0  # a tie does not push either answer up
    swapped = losses.simpo(None, chosen_logps=t(-6.0), rejected_logps=t(-2.0), label_prob=t(1.0), **kw)
    zero = losses.simpo(None, chosen_logps=t(-2.0), rejected_logps=t(-6.0), label_prob=t(0.0), **kw)
    assert zero.item() == pytest.approx(swapped.item(), abs=1e-12)


# ----------------------------------------------------------------------------- hinge


def test_hinge_by_hand_and_equals_trl():
    # beta h = 0.5 * 1.2 = 0.6 -> 1 - 0.6 = 0.4; beta h = 0.5 * 3 = 1.5 -> 0
    got = losses.hinge(t(1.2, 3.0, -2.0), beta=0.5, label_prob=t(1.0, 1.0, 1.0))
    assert got.tolist() == pytest.approx([0.4, 0.0, 2.0], abs=1e-12)
    # TRL's hinge is relu(1 - beta (chosen - rejected)) on whatever it is given: give it h as chosen, 0 as rejected
    h = t(0.3, -1.7, 4.2, 0.0)
    theirs = trl_cpo_loss("hinge", h, torch.zeros_like(h), beta=0.8)
    assert torch.allclose(losses.hinge(h, beta=0.8, label_prob=torch.ones_like(h)), theirs, atol=1e-6, rtol=0)


def test_hinge_soft_label():
    # p = 0.75, beta h = 0.4: 0.75 * 0.6 + 0.25 * 1.4 = 0.8
    assert losses.hinge(t(0.8), beta=0.5, label_prob=t(0.75)).item() == pytest.approx(0.8, abs=1e-12)
    h = t(0.3, -0.6).requires_grad_()
    losses.hinge(h, beta=1.0, label_prob=t(0.5, 0.5)).sum().backward()
    assert h.grad.tolist() == [0.0, 0.0]  # |beta h| < 1: an undecided pair has no gradient


# ----------------------------------------------------------------------------- RRHF


def toy_group():
    # 3 real candidates and one pad (index 3, with a high reward that must be ignored).
    logps = t(-4.0, -3.0, -6.0, -0.1)[None]  # (1, 4)
    lengths = t(2.0, 3.0, 2.0, 1.0)[None]  # p = [-2, -1, -3]
    rewards = t(1.0, 3.0, 2.0, 9.0)[None]
    valid = torch.tensor([[True, True, True, False]])
    return logps, lengths, rewards, valid


def test_rrhf_by_hand():
    # worse->better pairs: (0 < 2): relu(-2 - -3) = 1; (0 < 1): relu(-2 - -1) = 0; (2 < 1): relu(-3 - -1) = 0
    # best (reward 3) is candidate 1: token-mean NLL 3/3 = 1. L = 1 + 1.
    assert losses.rrhf(*toy_group()).item() == pytest.approx(2.0, abs=1e-12)
    assert losses.rrhf(*toy_group(), rank_weight=2.0, sft_weight=0.5).item() == pytest.approx(2.5, abs=1e-12)
    # length_penalty 0: raw sums [-4, -3, -6]; (0 < 2): relu(-4 + 6) = 2; SFT still per token
    assert losses.rrhf(*toy_group(), length_penalty=0.0).item() == pytest.approx(3.0, abs=1e-12)


def test_rrhf_ties_make_no_pair():
    logps, lengths, _, valid = toy_group()
    same = torch.full_like(logps, 1.0)
    # No ranked pair at all: only the SFT term is left (argmax of equal rewards is the first candidate: 4/2)
    assert losses.rrhf(logps, lengths, same, valid).item() == pytest.approx(2.0, abs=1e-12)


# ----------------------------------------------------------------------------- PRO


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_pro_by_hand_without_temperature():
    # s = [-2, -1, -3]; ranked by reward: y1 = c1 (-1), y2 = c2 (-3), y3 = c0 (-2)
    r1 = lse(-1, -3, -2) - (-1)
    r2 = lse(-3, -2) - (-3)
    got = losses.pro(*toy_group(), sft_weight=0.0, reward_temperature=False).item()
    assert got == pytest.approx(r1 + r2, abs=1e-12)
    with_sft = losses.pro(*toy_group(), sft_weight=0.5, reward_temperature=False).item()
    assert with_sft == pytest.approx(r1 + r2 + 0.5 * 1.0, abs=1e-12)


def test_pro_by_hand_with_reward_temperature():
    # round 1 (y1 = c1, r 3): T(c2) = 1/(3-2) = 1, T(c0) = 1/(3-1) = 0.5, T(y1) = min = 0.5
    r1 = lse(-1 * 0.5, -3 * 1.0, -2 * 0.5) - (-1 * 0.5)
    # round 2 (y2 = c2, r 2): T(c0) = 1/(2-1) = 1, T(y2) = 1
    r2 = lse(-3.0, -2.0) - (-3.0)
    got = losses.pro(*toy_group(), sft_weight=0.0).item()
    assert got == pytest.approx(r1 + r2, abs=1e-12)


def test_pro_two_candidates_is_dpo_like_sigmoid_on_mean_logps():
    # n = 2, T = 1: -log [e^s1 / (e^s1 + e^s2)] = -log s(s1 - s2)
    logps, lengths = t(-2.0, -5.0)[None], t(1.0, 1.0)[None]
    got = losses.pro(logps, lengths, t(1.0, 0.0)[None], torch.tensor([[True, True]]), sft_weight=0.0,
                     reward_temperature=False)
    assert got.item() == pytest.approx(math.log1p(math.exp(-3.0)), abs=1e-12)


# ----------------------------------------------------------------------------- reward-model identities


def test_colossalchat_log_exp_is_bradley_terry():
    g = torch.Generator().manual_seed(1)
    rc, rr = torch.randn(64, generator=g, dtype=torch.float64) * 3, torch.randn(64, generator=g, dtype=torch.float64) * 3
    assert torch.allclose(losses.log_exp(rc, rr), losses.bradley_terry(rc, rr), atol=1e-12, rtol=0)


def test_center_penalty_by_hand():
    # ((1 + -3)^2 + (2 + 0)^2) / 2 = (4 + 4) / 2 = 4, times 0.01
    assert losses.center_penalty(t(1.0, 2.0), t(-3.0, 0.0), 0.01).item() == pytest.approx(0.04, abs=1e-12)
