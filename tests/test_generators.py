"""Generators and judges with a scripted engine: prompts, parsing, pairing, ties, drops, filters."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from prefdata.engines.base import ChatRequest
from prefdata.engines.scripted import ScriptedEngine
from prefdata.generators import bpo, conditional, rlcd, self_reward
from prefdata.judges.pairwise import PairwiseJudge, combine_orders, parse_winner
from prefdata.judges.pointwise import RUBRIC, parse_score


def prompts(n=3):
    return pa.Table.from_pylist([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"How do I do task {i} well?"}]}
                                 for i in range(n)])


@pytest.mark.parametrize("text,want", [("Good answer.\nScore: 4", 4.0), ("score: 3/5", 3.0), ("Score: **5**", 5.0),
                                       ("I'd give it a 4", None), ("Score: 7", None), ("Score: 2\nthen Score: 3", 3.0),
                                       ("", None)])
def test_parse_score(text, want):
    assert parse_score(text) == want


def test_pairwise_verdicts_and_position_swap():
    assert parse_winner("blah\nWinner: B") == "b" and parse_winner("no verdict") is None
    assert combine_orders("a", "b") == 1.0 and combine_orders("b", "a") == 0.0
    assert combine_orders("a", "a") is None and combine_orders("tie", "b") is None and combine_orders(None, "b") is None

    def always_a(req, s):  # a position-biased judge: every verdict flips with the order
        return "Winner: A"

    v, _, _ = PairwiseJudge().judge(ScriptedEngine(always_a), [[{"role": "user", "content": "q"}]], ["x"], ["y"])
    assert v == [None]

    def prefers_x(req, s):
        a = re.search(r"Reply A:\n(.*?)\n\nReply B", req.messages[0]["content"], re.S).group(1)
        return "Winner: A" if a == "xx" else "Winner: B"

    v, _, _ = PairwiseJudge().judge(ScriptedEngine(prefers_x), [[{"role": "user", "content": "q"}]] * 2, ["xx", "yy"], ["yy", "xx"])
    assert v == [1.0, 0.0]


def test_self_reward_pairs_best_vs_worst_with_ties_and_unparseable():
    def engine(req: ChatRequest, s: int) -> str:
        text = req.messages[-1]["content"]
        if "additive scale" in text:
            answer = text.split("Assistant reply:\n")[1].split("\n\nWrite at most")[0]
            q = int(re.search(r"task (\d)", text).group(1))
            if q == 1:
                return "Fine.\nScore: 3"  # every candidate ties -> no pair
            if answer.endswith("#3") and s == 0:
                return "no score line"  # unparseable: null, excluded from the mean
            return f"ok\nScore: {int(answer[-1]) + 1}"
        return f"Candidate answer to the request number #{s}"

    report = {}
    pairs, cands = self_reward.generate(prompts(2), ScriptedEngine(engine), self_reward.SelfRewardConfig(), report=report)
    assert len(pairs) == 1 and report["drop_reasons"] == {"tie between best and worst": 1}
    row = pairs.to_pylist()[0]
    assert row["chosen"][0]["content"].endswith("#3") and row["rejected"][0]["content"].endswith("#0")
    assert row["chosen_score"] == 4.0 and row["rejected_score"] == 1.0 and row["margin"] == 3.0
    assert cands.num_rows == 8
    c3 = [c for c in cands.to_pylist() if c["prompt_id"] == "p0" and c["completion"][0]["content"].endswith("#3")][0]
    assert c3["judge_scores"] == [None, 4.0, 4.0] and c3["judgements"][0] == "no score line" and c3["score"] == 4.0
    assert 0 < report["unparseable_rate"] < 0.2


def test_conditional_labels_by_direction_and_drops_unparseable():
    def engine(req, s):
        text = req.messages[-1]["content"]
        if "Draft reply" in text:
            if "task 2" in text:
                return "I changed stuff but forgot the tags"
            return "<aspects>helpfulness, relevance</aspects><response>An improved, more specific reply for you.</response>"
        return "A first draft reply to the request."

    report = {}
    out = conditional.generate(prompts(3), ScriptedEngine(engine), conditional.ConditionalConfig(max_retries=1),
                               seed=0, report=report)
    assert len(out) == 2 and any("unparseable" in k for k in report["drop_reasons"])
    for r in out.to_pylist():
        meta = json.loads(r["meta"])
        assert meta["aspects"] == ["helpfulness", "relevance"]
        improved = "An improved, more specific reply for you."
        assert (r["chosen"][0]["content"] == improved) == (meta["direction"] == "better")
    # Directions are seeded per example, independent of order.
    assert conditional.direction("p1", 0, 0.5) == conditional.direction("p1", 0, 0.5)
    assert len({conditional.direction(f"p{i}", 0, 0.5) for i in range(20)}) == 2


def test_bpo_parsing_and_filters():
    comp, opt, why = bpo.parse_construct("<comparison>A is correct</comparison>\n<optimized>Explain X step by step.</optimized>\n<end>")
    assert (comp, opt, why) == ("A is correct", "Explain X step by step.", None)
    assert bpo.parse_construct("<comparison>x</comparison>")[2].startswith("unparseable")
    assert "leftover" in bpo.parse_construct("<comparison>x</comparison><optimized>do <end> it</optimized>")[2]
    assert bpo.length_filter("one two three four five", "one") is not None
    assert bpo.length_filter("hi", " ".join(["w"] * 13)) is not None
    assert bpo.length_filter("explain gravity", "explain gravity simply with an example") is None


def test_bpo_construct_rewrite_evaluate():
    pairs = rlcd.pair_table([{"prompt": [{"role": "user", "content": "Explain gravity to me"}],
                              "chosen": [{"role": "assistant", "content": "Gravity pulls masses together."}],
                              "rejected": [{"role": "assistant", "content": "No."}], "source": "t"}])

    def engine(req, s):
        t = req.messages[-1]["content"]
        if "Good reply" in t:
            return "<comparison>The good reply explains.</comparison><optimized>Explain gravity to me in simple terms.</optimized><end>"
        if "Rewrite the instruction" in t:
            return "Explain gravity to me clearly, with an everyday example."
        if "Compare two assistant replies" in t:
            a = t.split("Reply A:\n")[1].split("\n\nReply B")[0]
            return "Winner: A" if "example" in a else "Winner: B"
        return "Answer with an example." if "example" in t else "Answer."

    eng = ScriptedEngine(engine)
    built = bpo.construct(pairs, eng)
    assert built.column("optimized_prompt").to_pylist() == ["Explain gravity to me in simple terms."]
    rew = bpo.rewrite(pairs.select(["id", "prompt"]), eng)
    assert "everyday example" in rew.column("optimized_prompt").to_pylist()[0]
    table, stats = bpo.evaluate(rew, eng, eng)
    assert stats == {"win": 1.0, "tie": 0.0, "loss": 0.0, "n": 1}


def test_rlcd_rescore_keeps_ties_null():
    def engine(req, s):
        t = req.messages[-1]["content"]
        if "Compare two assistant replies" in t:
            return "Winner: A"  # position-biased: always a tie after swapping
        return f"Some reply ({req.messages[0]['content'][-30:]}) for you."

    report = {}
    out = rlcd.generate(prompts(2), ScriptedEngine(engine), rlcd.RLCDConfig(rescore=True), report=report)
    assert out.column("label_prob").to_pylist() == [None, None]
    assert report["rescore"] == {"tie": 2}


def test_rubric_is_our_five_point_additive_scale():
    from prefdata.judges.pointwise import JUSTIFY_THEN_SCORE

    assert RUBRIC.count("\n1.") + RUBRIC.count("\n2.") + RUBRIC.count("\n5.") == 3 and "Score: <points>" in JUSTIFY_THEN_SCORE


@pytest.mark.parametrize("cont,want", [("4 out of 5", 4.0), ("3, good", 3.0), ("10 points", None), ("2.5/5", 2.5),
                                       ("great", None), ("7", None)])
def test_parse_score_first(cont, want):
    from prefdata.judges.pointwise import parse_score_first

    assert parse_score_first(cont) == want


def test_conditional_seeded_aspects_mode():
    def engine(req, s):
        text = req.messages[-1]["content"]
        if "Draft reply" in text:
            assert "Reply with the rewritten reply only" in text
            return "A rewritten reply that differs from the draft."
        return "A first draft reply to the request."

    out = conditional.generate(prompts(4), ScriptedEngine(engine), conditional.ConditionalConfig(aspect_choice="seeded"))
    assert len(out) == 4
    for r in out.to_pylist():
        meta = json.loads(r["meta"])
        assert 1 <= len(meta["aspects"]) <= 3 and set(meta["aspects"]) <= set(conditional.GUIDELINES["chat"])


def test_bpo_two_step_construct():
    pairs = rlcd.pair_table([{"prompt": [{"role": "user", "content": "Explain gravity to me"}],
                              "chosen": [{"role": "assistant", "content": "Gravity pulls masses together."}],
                              "rejected": [{"role": "assistant", "content": "No."}], "source": "t"}])

    def engine(req, s):
        t = req.messages[-1]["content"]
        if t.endswith("correctness, helpfulness and harmlessness."):
            return "The good reply explains; the bad one refuses."
        if "Write only the rewritten instruction" in t:
            assert "The good reply explains" in t
            return "Explain gravity to me in simple terms."
        raise AssertionError(t)

    out = bpo.construct(pairs, ScriptedEngine(engine), bpo.ConstructConfig(format="two_step"))
    row = out.to_pylist()[0]
    assert row["optimized_prompt"] == "Explain gravity to me in simple terms." and "refuses" in row["comparison"]
