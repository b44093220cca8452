"""Reward-model voters: a real 1-output classifier votes; more outputs is a clear error."""

from __future__ import annotations

import pytest

from prefdata.errors import PrefdataError
from prefdata.rewards.voters import RewardModelVoter, reward_model_votes
from prefdata.schema import validate


def seq_cls(tiny_model, tmp_path, labels):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=labels)
    out = tmp_path / f"rm{labels}"
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


def test_reward_model_voter(tiny_model, tmp_path):
    t = validate([{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad answer {i}"} for i in range(5)], "pair")
    rm = seq_cls(tiny_model, tmp_path, 1)
    votes = reward_model_votes(t, RewardModelVoter(model=rm, batch_size=2))
    (name, d), = votes.items()
    assert name.startswith("rm:") and d.shape == (5,) and (d != 0).any()
    # Swapping chosen and rejected negates every vote.
    swapped = t.set_column(t.schema.get_field_index("chosen"), "chosen", t.column("rejected")) \
               .set_column(t.schema.get_field_index("rejected"), "rejected", t.column("chosen"))
    (_, d2), = reward_model_votes(swapped, RewardModelVoter(model=rm)).items()
    assert d2 == pytest.approx(-d, abs=1e-4)


def test_multi_output_reward_model_is_rejected(tiny_model, tmp_path):
    t = validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")
    with pytest.raises(PrefdataError, match="has 2 outputs"):
        reward_model_votes(t, RewardModelVoter(model=seq_cls(tiny_model, tmp_path, 2)))


def test_voter_and_candidate_scorer_share_one_scorer(tiny_model, tmp_path):
    """The pair vote is exactly score(chosen) - score(rejected) of the rejection sampler's scorer, and
    both read a whitened model on its training scale (one code path: rewards/reward_model.py)."""
    import numpy as np

    from prefdata.rewards.score import reward_model_scores
    from trainers.reward_norm import save_reward_norm

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": "bad answer " * (i + 1)} for i in range(4)]
    t = validate(rows, "pair")
    rm = seq_cls(tiny_model, tmp_path, 1)
    spec = RewardModelVoter(model=rm, batch_size=3)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    raw_vote = next(iter(reward_model_votes(t, spec, progress=False).values()))
    raw_c = reward_model_scores(prompts, [r["chosen"] for r in rows], spec, progress=False)
    raw_r = reward_model_scores(prompts, [r["rejected"] for r in rows], spec, progress=False)
    assert np.allclose(raw_vote, raw_c - raw_r, atol=1e-5) and np.abs(raw_vote).max() > 0
    save_reward_norm(rm, np.array([raw_c[0] - 0.5, raw_c[0] + 0.5]))  # mean raw_c[0], std 0.5
    assert np.allclose(reward_model_scores(prompts, [rows[0]["chosen"]], spec, progress=False), [0.0], atol=1e-5)
    vote = next(iter(reward_model_votes(t, spec, progress=False).values()))
    assert np.allclose(vote, raw_vote / 0.5, atol=1e-4)  # the offset cancels, the scale does not
