"""vote.combine and policies.apply/flip against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from prefdata.curation.policies import PolicyConfig, apply, flip
from prefdata.curation.vote import combine, fit_slope
from prefdata.errors import DataError, PrefdataError
from prefdata.schema import validate


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- combine

# Voter a: mean 1, deviations +-2 -> std 2 -> z = [1.5, -0.5, 1.5, -0.5]
# Voter b: mean 20, deviations +-10 -> std 10 -> z = [1, 3, 1, 3]
A = np.array([3.0, -1.0, 3.0, -1.0])
B = np.array([10.0, 30.0, 10.0, 30.0])


def test_standardise_by_std_without_centring():
    f = combine(["p", "q", "r", "s"], {"a": A, "b": B}, temperature=1.0)
    assert f.columns == ["id", "votes", "strength_mean", "strength_std", "label_prob", "agreement"]
    assert f["id"].to_list() == ["p", "q", "r", "s"]
    assert f["votes"].to_list() == [[1.5, 1.0], [-0.5, 3.0], [1.5, 1.0], [-0.5, 3.0]]
    # b always prefers chosen; centring would have turned half its votes negative.
    assert all(v[1] > 0 for v in f["votes"].to_list())


def test_mean_std_label_prob_agreement():
    f = combine(["p", "q", "r", "s"], {"a": A, "b": B}, temperature=1.0)
    # row p: (1.5 + 1)/2 = 1.25, std ddof=0 = |1.5 - 1|/2 = 0.25; row q: (-0.5 + 3)/2 = 1.25, std 1.75
    assert np.allclose(f["strength_mean"].to_numpy(), [1.25, 1.25, 1.25, 1.25])
    assert np.allclose(f["strength_std"].to_numpy(), [0.25, 1.75, 0.25, 1.75])
    assert np.allclose(f["label_prob"].to_numpy(), [sig(1.25)] * 4)
    assert f["agreement"].to_list() == [1.0, 0.5, 1.0, 0.5]
    f2 = combine(["p", "q", "r", "s"], {"a": A, "b": B}, temperature=2.0)
    assert np.allclose(f2["label_prob"].to_numpy(), [sig(0.625)] * 4)


def test_three_voters_agreement_and_std():
    # Each voter has mean 0 and std 1 already: z = d.
    a, b, c = np.array([1.0, -1.0]), np.array([1.0, -1.0]), np.array([-1.0, 1.0])
    f = combine(["x", "y"], {"a": a, "b": b, "c": c}, temperature=1.0)
    assert np.allclose(f["strength_mean"].to_numpy(), [1 / 3, -1 / 3])
    # deviations 2/3, 2/3, -4/3 -> var = (4/9 + 4/9 + 16/9) / 3 = 8/9
    assert np.allclose(f["strength_std"].to_numpy(), [math.sqrt(8 / 9)] * 2)
    assert np.allclose(f["agreement"].to_numpy(), [2 / 3, 2 / 3])
    assert np.allclose(f["label_prob"].to_numpy(), [sig(1 / 3), sig(-1 / 3)])


def test_default_temperature_is_the_fitted_slope():
    d = np.array([2.0, 1.0, -0.5, 3.0, -1.0, 0.5])  # mean 5/6, var = 15.5/6 - 25/36 = 17/9
    f = combine(list("abcdef"), {"v": d})
    s = f["strength_mean"].to_numpy()
    assert np.allclose(s, d / math.sqrt(17 / 9))
    a = fit_slope(s)
    assert np.allclose(f["label_prob"].to_numpy(), 1 / (1 + np.exp(-a * s)))
    # The slope maximises sum log sigmoid(a * s): the score equation holds at it.
    assert abs(np.sum(s / (1 + np.exp(a * s)))) < 1e-6


def test_constant_voter_is_left_unscaled():
    f = combine(["x", "y"], {"flat": np.array([0.0, 0.0]), "v": np.array([1.0, -1.0])}, temperature=1.0)
    assert f["votes"].to_list() == [[0.0, 1.0], [0.0, -1.0]]


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(t):
    with pytest.raises(PrefdataError, match="temperature"):
        combine(["x"], {"v": np.array([1.0])}, temperature=t)


# The three error cases: empty input, length mismatch (voter + both lengths), non-finite (voter + 1-based row).

def test_empty_input():
    with pytest.raises(DataError, match="no pairs"):
        combine([], {"a": np.array([])})
    with pytest.raises(DataError, match="no voters"):
        combine(["x"], {})


def test_length_mismatch_names_voter_and_both_lengths():
    with pytest.raises(DataError, match=r"voter 'short' scored 2 rows but the dataset has 3 pairs"):
        combine(["x", "y", "z"], {"ok": np.ones(3), "short": np.ones(2)})


@pytest.mark.parametrize("bad,row", [(np.nan, 1), (-np.inf, 2), (np.inf, 3)])
def test_non_finite_names_voter_and_first_bad_row(bad, row):
    d = np.array([1.0, 2.0, 3.0, np.nan])  # row 4 is bad too: the first bad row is reported
    d[row - 1] = bad
    with pytest.raises(DataError, match=rf"row {row}, field 'votes.weird'") as ei:
        combine(list("wxyz"), {"fine": np.ones(4), "weird": d})
    assert ei.value.row == row and "voter 'weird'" in ei.value.reason


# ----------------------------------------------------------------------------- policies

def voted(strengths, std=None):
    n = len(strengths)
    t = validate([{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}",
                   "chosen_score": 5.0, "rejected_score": 1.0, "label_prob": 1.0} for i in range(n)], "pair")
    pairs = pl.from_arrow(t)
    s = np.asarray(strengths, dtype=float)
    votes = pl.DataFrame({"id": pairs["id"], "votes": [[x, 2 * x] for x in s], "strength_mean": s,
                          "strength_std": np.zeros(n) if std is None else np.asarray(std, dtype=float),
                          "label_prob": 1 / (1 + np.exp(-s)), "agreement": np.ones(n)})
    return pairs, votes


def by_id(df):
    return {r["id"]: r for r in df.to_dicts()}


def flipped_ids(kept):
    return sorted(kept.filter(pl.col("flipped"))["id"].to_list())


STRENGTHS = [-3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_no_policy_keeps_everything_and_attaches_votes():
    pairs, votes = voted(STRENGTHS)
    kept, dropped = apply(pairs, votes, PolicyConfig())
    assert kept.height == 10 and dropped.height == 0 and not kept["flipped"].any()
    assert kept["id"].to_list() == pairs["id"].to_list()
    assert kept["strength_mean"].to_list() == STRENGTHS
    assert np.allclose(kept["label_prob"].to_numpy(), 1 / (1 + np.exp(-np.array(STRENGTHS))))
    assert kept["margin"].to_list() == [0.0] * 10


def test_flip_bottom_q_uses_lower_quantile_and_only_negative():
    pairs, votes = voted(STRENGTHS)
    ids = pairs["id"].to_list()
    # q = 0.2: lower quantile of 10 values = sorted[floor(0.2 * 9)] = sorted[1] = -2 -> flip -3, -2
    kept, _ = apply(pairs, votes, PolicyConfig(flip_bottom_q=0.2))
    assert flipped_ids(kept) == sorted(ids[:2])
    # q = 0.5: cut = sorted[4] = 1.0, but positive pairs are never flipped -> only the three negatives
    kept, _ = apply(pairs, votes, PolicyConfig(flip_bottom_q=0.5))
    assert flipped_ids(kept) == sorted(ids[:3])


def test_flip_below_and_what_a_flip_changes():
    pairs, votes = voted(STRENGTHS)
    ids = pairs["id"].to_list()
    kept, _ = apply(pairs, votes, PolicyConfig(flip_below=1.5))  # strength < -1.5: the -3 and -2 pairs
    assert flipped_ids(kept) == sorted(ids[:2])
    k, o = by_id(kept), by_id(pairs)
    r = k[ids[0]]
    assert r["chosen"] == o[ids[0]]["rejected"] and r["rejected"] == o[ids[0]]["chosen"]
    assert (r["chosen_score"], r["rejected_score"]) == (1.0, 5.0)
    assert r["votes"] == [3.0, 6.0] and r["strength_mean"] == 3.0 and r["strength_std"] == 0.0
    assert r["label_prob"] == pytest.approx(1 - sig(-3.0)) and r["label_prob"] == pytest.approx(sig(3.0))
    assert r["flipped"] is True and r["agreement"] == 1.0
    u = k[ids[2]]  # -1.0 is above -1.5: untouched
    assert u["chosen"] == o[ids[2]]["chosen"] and u["strength_mean"] == -1.0 and u["flipped"] is False


def test_flip_twice_is_identity():
    pairs, votes = voted(STRENGTHS)
    df = pairs.drop(["votes", "strength_mean", "strength_std", "label_prob"]).join(votes, on="id", maintain_order="left")
    mask = pl.col("strength_mean") < 0
    once = flip(df, mask)
    assert once["flipped"].to_list() == [True] * 3 + [False] * 7
    assert_frame_equal(flip(once, "flipped"), df)  # the same three rows, picked by their flag
    m = pl.Series([True, False] * 5)
    assert_frame_equal(flip(flip(df.with_columns(m.alias("m")), "m"), "m"), df.with_columns(m.alias("m")))


def test_apply_is_idempotent_and_original_votes_flip_back():
    pairs, votes = voted(STRENGTHS)
    cfg = PolicyConfig(flip_below=0.0)
    kept, _ = apply(pairs, votes, cfg)
    # Re-run with votes in the new orientation (as a re-vote would give): nothing changes.
    again, _ = apply(kept, kept.select(votes.columns), cfg)
    assert_frame_equal(again, kept)
    # Re-run with the original-orientation votes: the flipped pairs flip back to the original labels.
    back, _ = apply(kept, votes, cfg)
    o = by_id(pairs)
    for r in back.to_dicts():
        assert r["chosen"] == o[r["id"]]["chosen"] and r["chosen_score"] == 5.0 and r["flipped"] is False
    assert "agreement_right" not in back.columns


def test_drop_reasons_and_drop_before_flip():
    pairs, votes = voted([0.01, -0.02, 1.0, 2.0, -3.0, -4.0], std=[0.1, 0.1, 5.0, 0.1, 0.1, 9.0])
    ids = pairs["id"].to_list()
    kept, dropped = apply(pairs, votes, PolicyConfig(drop_abs_below=0.05, drop_std_above=1.0, flip_below=1.0))
    reasons = dict(zip(dropped["id"], dropped["drop_reason"]))
    assert reasons == {ids[0]: "ambiguous: |strength| < 0.05", ids[1]: "ambiguous: |strength| < 0.05",
                       ids[2]: "disagreement: std > 1.0", ids[5]: "disagreement: std > 1.0"}
    assert kept["id"].to_list() == [ids[3], ids[4]] and "drop_reason" not in kept.columns
    # -4.0 qualifies for a flip but is dropped first: it leaves in its original orientation.
    d = by_id(dropped)[ids[5]]
    assert d["flipped"] is False and d["strength_mean"] == -4.0 and d["chosen"] == by_id(pairs)[ids[5]]["chosen"]
    assert by_id(kept)[ids[4]]["flipped"] is True
    assert sorted(kept["id"].to_list() + dropped["id"].to_list()) == sorted(ids)


def test_ambiguous_wins_when_both_drop_rules_match():
    pairs, votes = voted([0.0], std=[5.0])
    _, dropped = apply(pairs, votes, PolicyConfig(drop_abs_below=0.5, drop_std_above=1.0))
    assert dropped["drop_reason"].to_list() == ["ambiguous: |strength| < 0.5"]


def test_soft_label_off_sets_one_also_on_flipped():
    pairs, votes = voted([-2.0, 0.5, 1.0])
    kept, _ = apply(pairs, votes, PolicyConfig(soft_label=False, flip_below=1.0))
    assert kept["label_prob"].to_list() == [1.0, 1.0, 1.0] and kept["flipped"].to_list() == [True, False, False]


def test_margin_from_strength_after_flip():
    pairs, votes = voted([-2.0, -0.5, 0.5, 3.0])
    kept, _ = apply(pairs, votes, PolicyConfig(margin_from_strength=True, margin_scale=0.5, flip_below=1.0))
    # -2 is flipped to +2 -> margin 1.0; -0.5 stays negative -> max(., 0) = 0
    assert kept["margin"].to_list() == [1.0, 0.0, 0.25, 1.5]


def test_config_is_strict():
    with pytest.raises(ValidationError):
        PolicyConfig(flip_bottom_q=1.0)
    with pytest.raises(ValidationError):
        PolicyConfig(flip_bottom=0.1)  # typo: extra keys are refused


def test_missing_or_duplicate_votes_are_errors():
    pairs, votes = voted([1.0, 2.0])
    with pytest.raises(DataError, match="1 of 2 pairs have no vote"):
        apply(pairs, votes.head(1), PolicyConfig(flip_below=0.0))
    with pytest.raises(DataError, match="occurs 2 times"):
        apply(pairs, pl.concat([votes, votes.head(1)]), PolicyConfig())
