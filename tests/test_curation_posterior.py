"""The latent-class posterior on voter matrices whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefdata.curation import posterior as P


def synthetic(n=4000, alpha=0.75, mus=(1.5, 0.8, 0.0), seed=0):
    """Votes in label orientation: +mu when the stored label is right, -mu when it is wrong."""
    rng = np.random.default_rng(seed)
    right = rng.random(n) < alpha
    sign = np.where(right, 1.0, -1.0)
    s = np.stack([m * sign + rng.normal(size=n) for m in mus], 1)
    return s, right


def test_hand_checked_posterior_for_fixed_parameters():
    # One family with mu = 1, sigma = 1 and alpha = 0.8: log-odds = logit(0.8) + 2 s.
    s = np.array([[0.0], [1.0], [-1.5]])
    alpha, mu, sigma = 0.8, np.array([1.0]), np.array([1.0])
    ev = s @ (2 * mu / sigma ** 2)
    lp = 1 / (1 + np.exp(-(math.log(4) + ev)))
    assert lp == pytest.approx([0.8, 4 * math.e ** 2 / (1 + 4 * math.e ** 2), 4 * math.e ** -3 / (1 + 4 * math.e ** -3)])
    # By Bayes directly: P(right | s) = a N(s; 1, 1) / (a N(s; 1, 1) + (1 - a) N(s; -1, 1)).
    n = lambda x, m: math.exp(-(x - m) ** 2 / 2)
    for x, p in zip(s[:, 0], lp):
        assert p == pytest.approx(alpha * n(x, 1) / (alpha * n(x, 1) + (1 - alpha) * n(x, -1)))


def test_em_recovers_label_accuracy_and_family_reliabilities():
    s, right = synthetic()
    post = P.fit(s, ["strong", "weak", "useless"])
    assert post.alpha == pytest.approx(right.mean(), abs=0.03)
    assert post.mu == pytest.approx([1.5, 0.8, 0.0], abs=0.1)
    assert post.sigma == pytest.approx([1.0, 1.0, 1.0], abs=0.06)
    acc = post.family_accuracy
    assert acc["strong"] == pytest.approx(0.933, abs=0.02) and acc["weak"] == pytest.approx(0.788, abs=0.03)
    assert abs(acc["useless"] - 0.5) < 0.04 and abs(post.weights["useless"]) < 0.1
    # The posterior is right more often than the stored label, and calibrated.
    assert ((post.label_prob >= 0.5) == right).mean() > right.mean() + 0.08
    assert P.ece(post.label_prob, right.astype(float)) < 0.03


def test_uninformative_families_leave_labels_alone():
    rng = np.random.default_rng(3)
    post = P.fit(rng.normal(size=(2000, 2)))
    assert post.label_prob.min() > 0.5  # nothing is confidently wrong, so nothing would be flipped


def test_noise_interval_covers_the_truth():
    s, right = synthetic(n=2000, alpha=0.8, mus=(1.2, 1.0), seed=5)
    lo, hi = P.noise_interval(s, rounds=100)
    assert lo < 1 - right.mean() < hi and hi - lo < 0.1


def test_gold_calibration_fixes_an_overconfident_posterior():
    s, right = synthetic(n=3000, alpha=0.8, mus=(1.0,), seed=2)
    post = P.fit(s)
    post.log_odds = 3 * post.log_odds  # three times too sure, as a mis-specified model would be
    post.label_prob = 1 / (1 + np.exp(-post.log_odds))
    gold = np.full(3000, np.nan)
    gold[:400] = right[:400]
    P.calibrate(post, gold)
    g = post.extra["gold"]
    assert g["pairs"] == 400 and g["ece_before"] > 0.08 and g["ece_after"] < 0.05
    assert post.calibration[0] == pytest.approx(1 / 3, abs=0.08)
    assert P.ece(post.label_prob[400:], right[400:].astype(float)) < 0.04  # pairs it was not fitted on
    # Through fit(): the gold vector is used the same way.
    assert P.fit(s, gold=gold).extra["gold"]["pairs"] == 400


def test_too_little_gold_is_reported_not_used():
    s, right = synthetic(n=100, seed=4)
    gold = np.full(100, np.nan)
    gold[:5] = 1
    post = P.fit(s, gold=gold)
    assert post.calibration is None and "too few" in post.extra["gold"]["note"]


def test_ece_by_hand():
    # Two bins used: 0.15 (2 pairs, 1 right) and 0.95 (2 pairs, both right).
    assert P.ece(np.array([0.15, 0.15, 0.95, 0.95]), np.array([1, 0, 1, 1])) == pytest.approx(
        (2 * abs(0.15 - 0.5) + 2 * abs(0.95 - 1.0)) / 4)


def test_an_auc_just_under_the_cut_never_reads_as_the_cut():
    """0.7496 printed as 0.75 beside "under the 0.75 needed" would contradict itself: it reads 0.74."""
    from prefdata.curation import posterior as P

    assert P.below(0.7496) == "0.74" and P.below(0.70) == "0.70" and P.below(0.6612) == "0.66"
