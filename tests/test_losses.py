"""trainers.losses against numbers worked out by hand, and the identities the issue asks for."""

from __future__ import annotations

import math

import pytest
import torch

from prefdata.errors import ConfigError
from trainers import losses


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x):  # -log sigmoid(-x), written out so the expectations do not reuse torch
    return math.log1p(math.exp(x))


def test_sigmoid_by_hand():
    # -log s(0.5 * 2) = log(1 + e^-1) = 0.3132616875...
    assert losses.sigmoid(t(2.0), beta=0.5).item() == pytest.approx(0.31326168751822286, abs=1e-12)
    assert losses.sigmoid(t(0.0), beta=0.1).item() == pytest.approx(math.log(2), abs=1e-12)


def test_ipo_by_hand():
    # per-token h' = 4/2 - 1/1 = 1; tau = 0.25 -> 1/(2 tau) = 2; (1 - 2)^2 = 1
    out = losses.ipo(t(3.0), beta=0.25, chosen_logratio=t(4.0), rejected_logratio=t(1.0), chosen_len=t(2.0),
                     rejected_len=t(1.0))
    assert out.item() == pytest.approx(1.0, abs=1e-12)


def test_robust_by_hand():
    # eps = 0.25, beta h = 1: [0.75 * softplus(-1) - 0.25 * softplus(1)] / 0.5
    want = (0.75 * softplus(-1.0) - 0.25 * softplus(1.0)) / 0.5
    assert want == pytest.approx(-0.18673831248, abs=1e-9)
    assert losses.robust(t(1.0), beta=1.0, label_smoothing=0.25).item() == pytest.approx(want, abs=1e-12)
    # eps = 0 is plain DPO
    assert losses.robust(t(1.3), beta=0.1, label_smoothing=0.0).item() == pytest.approx(
        losses.sigmoid(t(1.3), beta=0.1).item(), abs=1e-12)


def test_soft_by_hand():
    # p = 0.8, beta h = 1: 0.8 * softplus(-1) + 0.2 * softplus(1) = 0.8*0.31326 + 0.2*1.31326
    got = losses.soft(t(2.0), beta=0.5, label_prob=t(0.8)).item()
    assert got == pytest.approx(0.8 * 0.31326168751822286 + 0.2 * 1.3132616875182228, abs=1e-12)
    assert losses.soft(t(0.0), beta=0.5, label_prob=t(0.8)).item() == pytest.approx(math.log(2), abs=1e-12)


def test_offset_by_hand_alpha_not_scaled_by_beta():
    # beta h - alpha m = 0.5*1 - 2*0.2 = 0.1 -> softplus(-0.1) = 0.6443966600...
    got = losses.offset(t(1.0), beta=0.5, margin=t(0.2), alpha=2.0).item()
    assert got == pytest.approx(0.6443966600735709, abs=1e-12)
    assert losses.offset(t(1.0), beta=0.5, margin=t(0.0)).item() == pytest.approx(
        losses.sigmoid(t(1.0), beta=0.5).item(), abs=1e-12)


def test_bradley_terry_margin_and_soft_label_by_hand():
    # d = 2 - 1 - 0.5 = 0.5: -log s(0.5) = 0.4740769841...
    assert losses.bradley_terry(t(2.0), t(1.0), margin=t(0.5)).item() == pytest.approx(0.47407698418010663,
                                                                                       abs=1e-12)
    # p = 0.25: 0.25 softplus(-0.5) + 0.75 softplus(0.5)
    want = 0.25 * softplus(-0.5) + 0.75 * softplus(0.5)
    got = losses.bradley_terry(t(2.0), t(1.0), margin=t(0.5), label_prob=t(0.25)).item()
    assert got == pytest.approx(want, abs=1e-12) and want == pytest.approx(0.84907698418, abs=1e-9)
    # p = 0 is the swapped pair (margin 0)
    assert losses.bradley_terry(t(2.0), t(1.0), label_prob=t(0.0)).item() == pytest.approx(
        losses.bradley_terry(t(1.0), t(2.0)).item(), abs=1e-12)


def test_soft_label_half_has_zero_gradient_on_h_at_the_reference():
    h = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    losses.soft(h, beta=0.1, label_prob=torch.full((4,), 0.5, dtype=torch.float64)).sum().backward()
    assert torch.equal(h.grad, torch.zeros(4, dtype=torch.float64))
    # d/dh = beta (s(beta h) - 1/2) in general: it only ever pulls h back towards 0
    h = t(0.7, -1.2).requires_grad_()
    losses.soft(h, beta=0.1, label_prob=t(0.5, 0.5)).sum().backward()
    want = [0.1 * (1 / (1 + math.exp(-0.1 * x)) - 0.5) for x in (0.7, -1.2)]
    assert h.grad.tolist() == pytest.approx(want, abs=1e-12)


def test_soft_label_zero_is_the_swapped_pair_and_one_is_dpo():
    h = t(0.7, -1.2, 2.0)
    assert torch.allclose(losses.soft(h, beta=0.1, label_prob=torch.zeros(3, dtype=torch.float64)),
                          losses.sigmoid(-h, beta=0.1))
    assert torch.allclose(losses.soft(h, beta=0.1, label_prob=torch.ones(3, dtype=torch.float64)),
                          losses.sigmoid(h, beta=0.1))


def test_registry():
    assert set(losses.DPO_LOSSES) == {"sigmoid", "ipo", "robust", "soft", "offset", "hinge", "simpo"}
    assert losses.get_loss("soft") is losses.soft
    with pytest.raises(ConfigError, match="unknown DPO loss 'sigmod'"):
        losses.get_loss("sigmod")
