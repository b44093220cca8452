"""self_reward as rejection sampling's preset over the one judge scorer (issue 26, item 4): the flat
judge_* keys mean the same as `judge:`, and the paper's tie rule, judged degenerate candidates and
per-prompt pairs (no dedup across prompts) hold through the shared code path."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from test_generators import Scripted, last

from prefdata.generators import rejection, self_reward
from prefdata.rewards.score import JudgeScorer


def test_flat_judge_keys_are_the_judge_scorer_config():
    flat = self_reward.SelfRewardConfig(judgements=2, judge_temperature=0.3, judge_max_tokens=24,
                                        judge_score_first=True, judge_engine={"model": "m"})
    nested = self_reward.SelfRewardConfig(judge={"k": 2, "temperature": 0.3, "max_tokens": 24, "score_first": True,
                                                 "engine": {"model": "m"}})
    assert flat == nested and flat.model_dump() == nested.model_dump()
    assert isinstance(flat.judge, JudgeScorer) and "judgements" not in flat.model_dump()
    assert self_reward.SelfRewardConfig.model_validate(flat.model_dump()) == flat
    # The paper's defaults, also under a partial judge: block.
    for cfg in (self_reward.SelfRewardConfig(), self_reward.SelfRewardConfig(judge={"engine": {"model": "x"}})):
        assert (cfg.judge.k, cfg.judge.temperature, cfg.judge.max_tokens, cfg.judge.score_first) == (3, 0.7, 160, False)
    assert cfg.rejection().reward is cfg.judge and cfg.rejection().pairing_used == "best_vs_worst"


@pytest.mark.parametrize("bad, where", [
    ({"judge": {"k": 2}, "judgements": 3}, "set twice"),
    ({"judge_max_tokens": 4}, "judge_max_tokens"),  # the flat key's own range, as before
    ({"judgements": 17}, "judgements"),
    ({"judge_engine": {"backend": "tpu"}}, "judge_engine.backend"),
])
def test_bad_judge_keys_fail_naming_the_key(bad, where):
    with pytest.raises(ValidationError, match=re.escape(where)):
        self_reward.SelfRewardConfig(**bad)


def _engine(req, s):
    text = last(req)
    if "additive scale" in text:
        j = int(text.split("Assistant reply:\n")[1].split("\n\n")[0][-1])
        return f"ok\nScore: {[2, 4, 4, 2, 5][j]}"  # tied best (1, 2), tied worst (0, 3), 4 loops
    return "loop " * 30 + "#4" if s == 4 else f"Answer #{s}"


def test_ties_degenerate_candidates_and_repeated_prompts_keep_self_rewards_rules():
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": "The same question"}]} for i in range(2)]
    report = {}
    pairs, cands = self_reward.generate(pa.Table.from_pylist(rows), Scripted(_engine),
                                        self_reward.SelfRewardConfig(n_candidates=5), report=report)
    metas = [json.loads(m) for m in pairs.column("meta").to_pylist()]
    # Of the tied best the later sample is chosen, of the tied worst the earlier rejected; the
    # repeated prompt gives its own pair (the step is sharded: no dedup across prompts).
    assert metas == [{"prompt_id": f"p{i}", "chosen_index": 2, "rejected_index": 0} for i in range(2)]
    assert set(pairs.column("source").to_pylist()) == {"self_reward/self-reward-1+rubric-judge-2"}
    looping = [c for c in cands.to_pylist() if c["filtered"]]
    assert len(looping) == 2 and all(c["score"] == 5.0 and len(c["judgements"]) == 3 for c in looping)
    assert report["judgements"] == 30 and cands.schema == self_reward.CANDIDATES
    assert json.loads(cands.column("sampling").to_pylist()[0]) == {"temperature": 0.7, "top_p": 0.9, "seed": 0,
                                                                   "sample": 0}


def test_rejection_sampling_keeps_its_own_tie_rule():
    idx, r = np.arange(4), np.array([2.0, 4.0, 4.0, 2.0])
    rng = np.random.default_rng(0)
    assert rejection.make_pairs(idx, r, "best_vs_worst", rng) == [(1, 3)]
    assert rejection.make_pairs(idx, r, "best_vs_worst", rng, later_first=True) == [(2, 0)]
