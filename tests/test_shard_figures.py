"""Generators draw their card figures on the first shard only: the pipeline keeps the first shard's
figures and closes the rest unseen, so drawing them on a later shard is pure cost (issue 17).

The rows and card sections must not depend on the shard: only the figures are skipped."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from test_generators import GRAVITY, Ctx, Scripted, _bpo_engine, _editor, _rlcd_engine, _self_reward_engine, prompts

from prefdata.generators import bpo, common, conditional, medical, rlcd, self_reward


@dataclass
class ShardCtx(Ctx):
    shard: int = 0
    shards: int = 2


CASES = {
    "rlcd": (lambda ctx: rlcd.run_step(rlcd.RLCDConfig(), prompts(3), ctx), _rlcd_engine, {"lengths"}),
    "medical": (lambda ctx: medical.run_step(medical.MedicalRLCDConfig(), prompts(3), ctx), _rlcd_engine, {"lengths"}),
    "conditional": (lambda ctx: conditional.run_step(conditional.ConditionalConfig(), prompts(3), ctx), _editor,
                    {"lengths"}),
    "self_reward": (lambda ctx: self_reward.run_step(self_reward.SelfRewardConfig(), prompts(3), ctx),
                    _self_reward_engine, {"lengths", "judge_scores"}),
    "bpo_construct": (lambda ctx: bpo._step_construct(bpo.ConstructConfig(), GRAVITY, ctx), _bpo_engine,
                      {"length_ratio"}),
    "bpo_rewrite": (lambda ctx: bpo._step_rewrite(bpo.RewriteConfig(), GRAVITY.select(["id", "prompt"]), ctx),
                    _bpo_engine, {"length_ratio"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_later_shard_draws_no_figures_and_keeps_rows_and_sections(name, monkeypatch):
    run, engine, figures = CASES[name]
    drawn = []
    for mod, attr in ((common, "length_figure"), (common, "histogram_figure"), (self_reward, "histogram_figure")):
        real = getattr(mod, attr)
        monkeypatch.setattr(mod, attr, lambda *a, _real=real, **k: drawn.append(1) or _real(*a, **k))
    first = run(ShardCtx(Scripted(engine), shard=0))
    assert set(first.figures) == figures and drawn
    drawn.clear()
    later = run(ShardCtx(Scripted(engine), shard=1))
    assert later.figures == {} and drawn == []
    assert later.tables["train"].equals(first.tables["train"])
    assert later.card_sections == first.card_sections


def test_a_context_without_shards_draws_as_before():
    # Steps called outside the pipeline (the Python API, tests) get a context with no `shard`.
    assert common.draws_figures(object()) and not common.draws_figures(ShardCtx(None, shard=3))
