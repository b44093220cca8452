"""vote.combine and policies.apply/flip against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from prefdata.curation.policies import PolicyConfig, apply, flip
from prefdata.curation.vote import combine
from prefdata.errors import DataError
from prefdata.schema import validate


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- combine

# Voter a: std 2 -> z = [1.5, -0.5, 1.5, -0.5]; voter b: std 10 -> z = [1, 3, 1, 3]
A = np.array([3.0, -1.0, 3.0, -1.0])
B = np.array([10.0, 30.0, 10.0, 30.0])


def test_heads_of_one_family_are_averaged_into_one_vote():
    v = combine(["p", "q", "r", "s"], {"h:0": A, "h:1": B}, length_control=False, interval=False)
    assert v.families == ["h"]
    # Mean of the unit-scaled heads: [1.25, 1.25, 1.25, 1.25]; its std is 0, so it stays as is.
    assert np.allclose(v.raw[:, 0], [1.25] * 4)
    assert np.allclose(v.spread[:, 0], [0.25, 1.75, 0.25, 1.75])  # std of the two heads per pair
    assert v.frame.columns[:6] == ["id", "votes", "strength_mean", "strength_std", "label_prob", "agreement"]


def test_separate_families_stay_separate_and_are_not_centred():
    v = combine(["p", "q", "r", "s"], {"a": A, "b": B}, length_control=False, interval=False)
    assert v.families == ["a", "b"]
    assert np.allclose(v.raw, np.stack([A / A.std(), B / B.std()], 1))
    assert all(x[1] > 0 for x in v.frame["votes"].to_list())  # b always prefers chosen: kept positive


def test_posterior_matches_the_closed_form_where_alpha_is_pinned_down():
    # With strong voters on many pairs the likelihood pins the label accuracy to one grid point, and
    # the alpha-averaged posterior is the closed form at that point.
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.8
    s = rng.normal(np.where(y, 1.5, -1.5)[:, None], 1.0, size=(3000, 2))
    v = combine(list(range(3000)), {"a": s[:, 0], "b": s[:, 1]}, length_control=False, interval=False)
    post = v.posterior
    z = v.controlled
    assert max(post.extra["alpha_profile"]["weight"]) > 0.5
    logit = math.log(post.alpha / (1 - post.alpha)) + z @ (2 * post.mu / post.sigma ** 2)
    assert np.allclose(v.frame["label_prob"].to_numpy(), 1 / (1 + np.exp(-logit)), atol=0.02)
    assert np.allclose(v.frame["strength_mean"].to_numpy(), z @ (2 * post.mu / post.sigma ** 2), rtol=0.05, atol=0.05)


def test_length_control_removes_the_length_slope():
    rng = np.random.default_rng(1)
    ell = rng.normal(size=500)
    signal = rng.normal(1.0, 1.0, size=500)
    vote = signal + 2.0 * ell  # a family that mostly likes long answers
    v = combine(list(range(500)), {"f": vote}, ell=ell, interval=False)
    assert abs(np.corrcoef(v.controlled[:, 0], ell)[0, 1]) < 1e-8
    assert v.length_corr[0] > 0.8 and v.length_slope[0] > 0
    off = combine(list(range(500)), {"f": vote}, ell=ell, length_control=False, interval=False)
    assert np.corrcoef(off.controlled[:, 0], ell)[0, 1] > 0.8


def test_constant_voter_is_left_unscaled():
    v = combine(["x", "y"], {"flat": np.array([0.0, 0.0]), "v": np.array([1.0, -1.0])}, length_control=False,
                interval=False)
    assert v.raw[:, 0].tolist() == [0.0, 0.0] and v.raw[:, 1].tolist() == [1.0, -1.0]


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
    kept, dropped = apply(pairs, votes, PolicyConfig(flip_max_prob=None))
    assert kept.height == 10 and dropped.height == 0 and not kept["flipped"].any()
    assert kept["id"].to_list() == pairs["id"].to_list()
    assert kept["strength_mean"].to_list() == STRENGTHS
    assert np.allclose(kept["label_prob"].to_numpy(), 1 / (1 + np.exp(-np.array(STRENGTHS))))
    assert kept["margin"].to_list() == [0.0] * 10


def test_flip_bottom_q_uses_lower_quantile_and_only_negative():
    pairs, votes = voted(STRENGTHS)
    ids = pairs["id"].to_list()
    # q = 0.2: lower quantile of 10 values = sorted[floor(0.2 * 9)] = sorted[1] = -2 -> flip -3, -2
    kept, _ = apply(pairs, votes, PolicyConfig(flip_max_prob=None, flip_bottom_q=0.2))
    assert flipped_ids(kept) == sorted(ids[:2])
    # q = 0.5: cut = sorted[4] = 1.0, but positive pairs are never flipped -> only the three negatives
    kept, _ = apply(pairs, votes, PolicyConfig(flip_max_prob=None, flip_bottom_q=0.5))
    assert flipped_ids(kept) == sorted(ids[:3])


def test_flip_below_and_what_a_flip_changes():
    pairs, votes = voted(STRENGTHS)
    ids = pairs["id"].to_list()
    kept, _ = apply(pairs, votes, PolicyConfig(flip_max_prob=None, flip_below=1.5))  # strength < -1.5: the -3 and -2 pairs
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
    cfg = PolicyConfig(flip_max_prob=None, flip_below=0.0)
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
    kept, dropped = apply(pairs, votes, PolicyConfig(flip_max_prob=None, drop_abs_below=0.05, drop_std_above=1.0, flip_below=1.0))
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
    _, dropped = apply(pairs, votes, PolicyConfig(flip_max_prob=None, drop_abs_below=0.5, drop_std_above=1.0))
    assert dropped["drop_reason"].to_list() == ["ambiguous: |strength| < 0.5"]


def test_soft_label_off_sets_one_also_on_flipped():
    pairs, votes = voted([-2.0, 0.5, 1.0])
    kept, _ = apply(pairs, votes, PolicyConfig(flip_max_prob=None, soft_label=False, flip_below=1.0))
    assert kept["label_prob"].to_list() == [1.0, 1.0, 1.0] and kept["flipped"].to_list() == [True, False, False]


def test_margin_from_strength_after_flip():
    pairs, votes = voted([-2.0, -0.5, 0.5, 3.0])
    kept, _ = apply(pairs, votes, PolicyConfig(flip_max_prob=None, margin_from_strength=True, margin_scale=0.5, flip_below=1.0))
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
        apply(pairs, votes.head(1), PolicyConfig(flip_max_prob=None, flip_below=0.0))
    with pytest.raises(DataError, match="occurs 2 times"):
        apply(pairs, pl.concat([votes, votes.head(1)]), PolicyConfig(flip_max_prob=None))


# ----------------------------------------------------------------------------- posterior policies

def test_default_policy_flips_only_confidently_wrong_labels():
    pairs, votes = voted([0.0] * 5)
    votes = votes.with_columns(pl.Series("label_prob", [0.05, 0.1, 0.11, 0.4, 0.9]))
    kept, dropped = apply(pairs, votes, PolicyConfig())
    assert kept["flipped"].to_list() == [True, True, False, False, False] and dropped.height == 0
    # A flipped pair carries the posterior of its new orientation.
    assert kept["label_prob"].to_list() == pytest.approx([0.95, 0.9, 0.11, 0.4, 0.9])


def test_ambiguous_band_is_dropped_but_flips_are_not():
    pairs, votes = voted([0.0] * 5)
    votes = votes.with_columns(pl.Series("label_prob", [0.05, 0.2, 0.45, 0.5, 0.9]))
    kept, dropped = apply(pairs, votes, PolicyConfig(drop_prob_below=0.5))
    ids = pairs["id"].to_list()
    assert sorted(dropped["id"].to_list()) == sorted(ids[1:3])
    assert dropped["drop_reason"].to_list() == ["ambiguous: posterior < 0.5"] * 2
    assert kept["id"].to_list() == [ids[0], ids[3], ids[4]] and kept["flipped"].to_list() == [True, False, False]


def test_flip_keeps_margin_consistent_with_the_swapped_scores():
    t = validate([{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 5.0, "rejected_score": 3.0,
                   "margin": 2.0}], "pair")
    df = flip(pl.from_arrow(t), pl.lit(True))
    r = df.to_dicts()[0]
    assert (r["chosen_score"], r["rejected_score"], r["margin"]) == (3.0, 5.0, -2.0)
    assert r["margin"] == r["chosen_score"] - r["rejected_score"]
    assert flip(df, pl.lit(True)).to_dicts()[0]["margin"] == 2.0


def test_signed_adaptive_margin():
    pairs, votes = voted([-0.5, 0.5, 3.0])
    kept, _ = apply(pairs, votes, PolicyConfig(flip_max_prob=None, margin_from_strength=True, signed_margin=True,
                                               margin_scale=0.5))
    assert kept["margin"].to_list() == [-0.25, 0.25, 1.5]
