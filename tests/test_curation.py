"""Voting, policies, cross-fitting, bad input, and the clean_labels step end to end."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from prefdata.curation.policies import PolicyConfig, apply
from prefdata.curation.vote import combine
from prefdata.errors import DataError
from prefdata.rewards.heads import cross_fit
from prefdata.schema import validate


def pairs(n):
    # Equal-length answers: the log length ratio is 0, so length control leaves the votes alone.
    return validate([{"prompt": f"q{i}", "chosen": f"good {i:03d}", "rejected": f"poor {i:03d}",
                      "chosen_score": 5.0, "rejected_score": 1.0} for i in range(n)], "pair")


def test_combine_counts_a_family_once_however_many_heads_it_has():
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 1.0, 300)
    other = rng.normal(1.0, 1.0, 300)
    heads = {f"heads:x:linear:{i}": base + 0.05 * rng.normal(size=300) for i in range(10)}
    ten = combine(list(range(300)), {**heads, "rm:y": other}, length_control=False, interval=False)
    one = combine(list(range(300)), {"heads:x:linear:0": base, "rm:y": other}, length_control=False, interval=False)
    assert ten.families == ["heads:x:linear", "rm:y"]
    # Ten near-copies of one voter weigh about as much as one copy: they are one annotator.
    w10, w1 = ten.posterior.weights, one.posterior.weights
    assert w10["heads:x:linear"] == pytest.approx(w1["heads:x:linear"], rel=0.1)
    assert w10["rm:y"] == pytest.approx(w1["rm:y"], rel=0.1)


@pytest.mark.parametrize("scores,msg", [
    ({"a": np.array([1.0, np.nan, 2.0])}, r"row 2, field 'votes.a'"),
    ({"a": np.ones(3), "b": np.ones(2)}, "voter 'b' scored 2 rows but the dataset has 3"),
    ({"a": np.array([1.0, 2.0, np.inf])}, "row 3"),
])
def test_bad_votes(scores, msg):
    with pytest.raises(DataError, match=msg):
        combine(["a", "b", "c"], scores)


def test_no_pairs():
    with pytest.raises(DataError, match="no pairs"):
        combine([], {"a": np.array([])})


def voted(strengths, std=None):
    t = pairs(len(strengths))
    ids = t.column("id").to_pylist()
    s = np.asarray(strengths, dtype=float)
    votes = pl.DataFrame({"id": ids, "votes": [[x] for x in s], "strength_mean": s,
                          "strength_std": std if std is not None else np.zeros_like(s),
                          "label_prob": 1 / (1 + np.exp(-s))})
    return pl.from_arrow(t), votes


def test_flip_bottom_q_only_negative_and_reversible():
    df, votes = voted([-2.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    kept, dropped = apply(df, votes, PolicyConfig(flip_max_prob=None, flip_bottom_q=0.2))
    assert dropped.height == 0
    by = {r["id"]: r for r in kept.to_dicts()}
    orig = {r["id"]: r for r in df.to_dicts()}
    flipped = [i for i, r in by.items() if r["flipped"]]
    assert len(flipped) == 2
    for i in flipped:
        assert by[i]["chosen"] == orig[i]["rejected"] and by[i]["chosen_score"] == 1.0
        assert by[i]["strength_mean"] > 0 and by[i]["label_prob"] > 0.5
    # A second vote that disagrees with the new orientation flips them back: labels restored.
    again, _ = apply(kept.drop("agreement", strict=False), votes, PolicyConfig(flip_max_prob=None, flip_below=0.0))
    back = {r["id"]: r for r in again.to_dicts()}
    for i in flipped:
        assert back[i]["chosen"] == orig[i]["chosen"] and back[i]["flipped"] is False


def test_drop_rules_and_margin():
    df, votes = voted([0.01, -0.02, 1.0, 2.0, -3.0], std=np.array([0.1, 0.1, 5.0, 0.1, 0.1]))
    kept, dropped = apply(df, votes, PolicyConfig(flip_max_prob=None, drop_abs_below=0.05, drop_std_above=1.0, flip_below=1.0,
                                                  margin_from_strength=True, margin_scale=0.5))
    reasons = sorted(dropped["drop_reason"].to_list())
    assert reasons == ["ambiguous: |strength| < 0.05"] * 2 + ["disagreement: std > 1.0"]
    assert kept.height == 2
    m = dict(zip(kept["strength_mean"].to_list(), kept["margin"].to_list()))
    assert m == {2.0: 1.0, 3.0: 1.5}  # the -3.0 pair was flipped to +3.0


def test_soft_label_off_sets_one():
    df, votes = voted([0.5, 1.0])
    kept, _ = apply(df, votes, PolicyConfig(flip_max_prob=None, soft_label=False))
    assert kept["label_prob"].to_list() == [1.0, 1.0]


def test_cross_fit_never_scores_a_pair_with_a_head_that_saw_it():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    xc, xr = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    fit = cross_fit(xc, xr, k=3, folds=4, seed=1)
    assert fit.scores.shape == (60, 3)
    for f, heads in enumerate(fit.trained_on):
        held = set(np.flatnonzero(fit.fold_of == f))
        for idx in heads:
            assert held.isdisjoint(set(idx.tolist()))


def test_heads_find_flipped_labels_on_learnable_data():
    """Rewards are linear in the features; flipped pairs must get low held-out strength."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    w = rng.normal(size=16)
    x1, x2 = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    better = (x1 @ w) > (x2 @ w)
    xc, xr = np.where(better[:, None], x1, x2), np.where(better[:, None], x2, x1)
    flip = rng.random(400) < 0.2
    xc, xr = np.where(flip[:, None], xr, xc), np.where(flip[:, None], xc, xr)
    fit = cross_fit(xc, xr, k=5, folds=5, seed=0)
    f = combine(list(range(400)), {f"h:{i}": fit.scores[:, i] for i in range(5)}, interval=False).frame
    assert roc_auc_score(flip, -f["label_prob"].to_numpy()) > 0.9


def test_clean_labels_step_through_pipeline(tmp_path, monkeypatch):
    """The whole step with a voter we control: flips, drops, card, side table, lineage."""
    from prefdata import pipeline, store
    from prefdata.curation import step as cstep

    t = pairs(20)
    store.commit("raw", t)
    strengths = np.linspace(-2, 4, 20)  # 7 negative
    monkeypatch.setattr(cstep, "collect_votes", lambda table, cfg, **kw: {
        "v1": strengths, "v2": strengths * 2 + 0.01 * np.arange(20)})
    p = tmp_path / "clean.yaml"
    p.write_text(json.dumps({"steps": [{"name": "clean", "uses": "clean_labels", "input": "raw@v1", "output": "clean",
                                        "config": {"voters": [{"type": "heads"}],
                                                   "policy": {"flip_max_prob": 0.1, "drop_prob_below": 0.5}}}]}))
    out = pipeline.run_pipeline(p)
    v = out["clean"]
    kept = store.load_table(v.ref)
    flipped = kept.column("flipped").to_pylist()
    lp = kept.column("label_prob").to_pylist()
    assert kept.num_rows < 20 and sum(flipped) >= 3
    # A flipped pair was confidently wrong (posterior <= 0.1), so it now carries >= 0.9; every kept
    # pair that was not flipped had a posterior of at least 0.5 (the dropped band is 0.1 .. 0.5).
    assert all(p >= 0.9 for p, f in zip(lp, flipped) if f) and all(p >= 0.5 for p in lp)
    dropped = store.load_table("clean-dropped@v1")
    assert dropped.num_rows + kept.num_rows == 20 and "drop_reason" in dropped.column_names
    card = v.card_path.read_text()
    assert "Label cleaning" in card and "Ten most doubtful pairs" in card and "length_control.png" in card
    assert (v.path / "posterior_hist.png").is_file()
    assert v.manifest["parents"] == ["raw@v1"]
