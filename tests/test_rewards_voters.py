"""Head and judge voters: one backbone pass for K heads, cached features, layer caching, position swap."""

from __future__ import annotations

import numpy as np
import pytest

from prefdata.rewards.voters import HeadsVoter, heads_votes, judge_votes
from prefdata.schema import validate


def table(n=12):
    return validate([{"prompt": f"question {i}?", "chosen": f"a careful, kind answer number {i}",
                      "rejected": f"no {i}"} for i in range(n)], "pair")


def test_k_heads_cost_one_backbone_pass_and_reruns_hit_the_cache(tiny_model, monkeypatch):
    from prefdata.rewards import features

    calls = []
    real = features.Backbone._embed
    monkeypatch.setattr(features.Backbone, "_embed", lambda self, texts, layers=None: calls.append(len(texts))
                        or real(self, texts, layers))
    t = table(12)
    spec = HeadsVoter(backbone=tiny_model, k=6, folds=3)
    votes = heads_votes(t, spec, seed=0, progress=False)
    # Six heads of one family, plus the answer log-prob family from the same forward pass.
    assert len(votes) == 7 and all(v.shape == (12,) for v in votes.values())
    assert sum(k.startswith("heads:") for k in votes) == 6 and any(k.startswith("lm:") for k in votes)
    assert sum(calls) == 24  # every text (12 chosen + 12 rejected) embedded exactly once for all 6 heads
    again = heads_votes(t, spec, seed=0, progress=False)
    assert sum(calls) == 24  # rerun: all features from the on-disk cache, no backbone pass
    for name in votes:
        assert np.allclose(votes[name], again[name])
    # A different seed trains different heads on the same cached features.
    other = heads_votes(t, spec, seed=1, progress=False)
    assert sum(calls) == 24 and not all(np.allclose(votes[n], other[n]) for n in votes)


def test_other_layers_cached_from_the_same_pass(tiny_model, tmp_path):
    from prefdata.rewards.features import Backbone, FeatureCache

    texts = ["short", "a somewhat longer text here", "mid text"]
    cache = FeatureCache(tmp_path / "f.sqlite")
    last = Backbone(tiny_model).embed(texts, cache, progress=False, also_layers=(1,))
    direct = Backbone(tiny_model, layer=1).embed(texts, None, progress=False)  # no cache: computed afresh
    cached = Backbone(tiny_model, layer=1).embed(texts, cache, progress=False)
    assert np.allclose(cached, direct, atol=1e-5) and not np.allclose(cached, last)
    assert Backbone(tiny_model, layer=1).id.endswith("|layer1") and "|layer" not in Backbone(tiny_model).id


class BiasedJudge:
    """Log-likelihood of answering "A"/"B": likes the longer reply, and likes "A" by +2 regardless."""

    model_id = "fake-judge"

    def score(self, requests, completions):
        out = []
        for req, letter in zip(requests, completions):
            letter = letter.strip()  # the judge scores " A" / " B" after its "Winner:" prefix
            text = req.messages[-1]["content"]
            a = text.split("Reply A:\n")[1].split("\n\nReply B:")[0]
            b = text.split("Reply B:\n")[1].split("\n\nAnswer")[0]
            mine, theirs = (a, b) if letter == "A" else (b, a)
            out.append(0.1 * (len(mine) - len(theirs)) + (2.0 if letter == "A" else 0.0))
        return out


def test_judge_is_position_swapped_so_the_a_bias_cancels():
    t = table(4)
    (name, d), = judge_votes(t, BiasedJudge()).items()
    assert name == "judge:fake-judge"
    lc = np.array([len(f"a careful, kind answer number {i}") for i in range(4)])
    lr = np.array([len(f"no {i}") for i in range(4)])
    # Order 1: logit = 0.2 (lc - lr) + 2; order 2: logit = 0.2 (lr - lc) + 2; half their difference:
    assert d == pytest.approx(0.2 * (lc - lr))
    swapped = validate([{"prompt": f"question {i}?", "rejected": f"a careful, kind answer number {i}",
                         "chosen": f"no {i}"} for i in range(4)], "pair")
    (_, d2), = judge_votes(swapped, BiasedJudge()).items()
    assert d2 == pytest.approx(-d)


def test_corrupt_feature_cache_is_one_line_naming_the_file(tmp_path):
    from prefdata.errors import PrefdataError
    from prefdata.rewards.features import FeatureCache

    bad = tmp_path / "features.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PrefdataError) as e:
        FeatureCache(bad).get_many(["k"])
    msg = str(e.value)
    assert str(bad) in msg and "cache clear" in msg and "\n" not in msg


def test_every_voter_comes_from_the_registry_and_judges_ask_for_an_engine():
    from prefdata.errors import ConfigError
    from prefdata.rewards import voters as V

    assert set(V.VOTERS) == {"heads", "reward_model", "finetuned_rm", "judge", "jury", "column"}
    # `voters:` entries are validated by looking their type up in the registry, not by a fixed union
    from pydantic import TypeAdapter, ValidationError

    spec = TypeAdapter(V.VoterSpec)
    assert type(spec.validate_python({"type": "heads", "k": 3})) is V.HeadsVoter
    with pytest.raises(ValidationError, match="unknown voter type 'nope'; registered: heads, reward_model"):
        spec.validate_python({"type": "nope"})
    assert [k for k, r in V.VOTERS.items() if r.needs_engine] == ["judge", "jury"]
    with pytest.raises(ConfigError, match="a judge voter needs an engine"):
        V.vote_with(V.JudgeVoter(), None, V.VoteContext())
