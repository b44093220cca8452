"""Judges with a scripted engine: strict score parsing, repeated judgements, position swapping."""

from __future__ import annotations

import re

import pytest

from prefdata.engines.base import ChatRequest
from prefdata.judges.pairwise import PairwiseJudge, combine_orders, parse_winner
from prefdata.judges.pointwise import RubricJudge, mean_score, parse_score, parse_score_first
from prefdata.prompts import pairwise as pw_tpl
from prefdata.prompts import rubric as rubric_tpl


class Scripted:
    """A minimal engine for judges: `fn(request, sample_index) -> text`, log-likelihoods from `lp`."""

    name, model_id = "scripted", "scripted-judge"

    def __init__(self, fn=None, lp=None):
        self.fn, self.lp, self.requests = fn, lp, []

    def generate(self, requests, params):
        from prefdata.engines.base import Completion

        self.requests += requests
        return [[Completion(text=self.fn(r, s), finish_reason="stop") for s in range(params.n)] for r in requests]

    def score(self, requests, completions):
        self.requests += requests
        return [self.lp(r, c) for r, c in zip(requests, completions)]


Q = [{"role": "user", "content": "What is 2+2?"}]


# ----------------------------------------------------------------------------- pointwise


@pytest.mark.parametrize("text,want", [
    ("Good answer.\nScore: 4", 4.0), ("Score: 3/5", 3.0), ("**Score:** 5", 5.0), ("Score: **5**", 5.0),
    ("Score: 2.5", 2.5), ("score=1", 1.0), ("Score: 4.", 4.0), ("Score: 0", 0.0),
    ("Score: 2\nScore: 3", 3.0),  # the last score line wins
    ("Score: 2\nthen Score: 3", 2.0),  # "then Score: 3" is not a score line
    ("I'd give it a 4", None), ("Score: 7", None), ("Score: 5.5", None), ("Score: four", None),
    ("Score: 3 points", None), ("My score: 4 because it is good", None), ("Score:", None), ("", None),
])
def test_parse_score_is_strict(text, want):
    assert parse_score(text) == want


@pytest.mark.parametrize("cont,want", [("4 out of 5", 4.0), ("3, good", 3.0), ("10 points", None), ("2.5/5", 2.5),
                                       ("great", None), ("7", None), ("5.5", None), (" **2**", 2.0), ("", None)])
def test_parse_score_first(cont, want):
    assert parse_score_first(cont) == want


def test_mean_score_ignores_nulls():
    assert mean_score([None, 4.0, 2.0]) == 3.0 and mean_score([None, None]) is None and mean_score([]) is None


def test_rubric_request_construction():
    reqs = RubricJudge().requests([Q], ["It is 4."])
    text = reqs[0].messages[0]["content"]
    assert "What is 2+2?" in text and "It is 4." in text and text.endswith(rubric_tpl.JUSTIFY_THEN_SCORE)
    assert re.findall(r"^\d\. ", text, re.M) == ["1. ", "2. ", "3. ", "4. ", "5. "]  # five additive criteria
    assert reqs[0].assistant_prefix == "" and reqs[0].template_version == rubric_tpl.TEMPLATE_VERSION
    sf = RubricJudge(score_first=True).requests([Q], ["It is 4."])[0]
    assert sf.assistant_prefix == "Score: " and sf.template_version.endswith("+score-first")
    assert sf.messages[0]["content"].endswith(rubric_tpl.SCORE_FIRST)


def test_rubric_judge_keeps_raw_text_and_nulls():
    outs = {0: "Solid.\nScore: 4", 1: "I cannot decide.", 2: "Fine.\nScore: 2"}
    raws, scores, means = RubricJudge(k=3).judge(Scripted(lambda r, s: outs[s]), [Q, Q], ["4", "5"])
    assert raws[0] == ["Solid.\nScore: 4", "I cannot decide.", "Fine.\nScore: 2"]
    assert scores == [[4.0, None, 2.0]] * 2 and means == [3.0, 3.0]
    raws, scores, means = RubricJudge(k=2).judge(Scripted(lambda r, s: "no number"), [Q], ["4"])
    assert scores == [[None, None]] and means == [None] and raws == [["no number", "no number"]]


def test_rubric_judge_score_first_records_what_the_judge_said():
    raws, scores, means = RubricJudge(k=2, score_first=True).judge(
        Scripted(lambda r, s: ["3\nIt is right but terse.", "excellent"][s]), [Q], ["4"])
    assert raws == [["Score: 3\nIt is right but terse.", "Score: excellent"]]
    assert scores == [[3.0, None]] and means == [3.0]


# ----------------------------------------------------------------------------- pairwise


@pytest.mark.parametrize("text,want", [("blah\nWinner: B", "b"), ("Winner: a", "a"), ("**Winner:** tie", "tie"),
                                       ("Winner: A\nWait, Winner: B", "b"), ("Winner: C", None), ("A is better", None),
                                       ("", None), ("Winner:B", "b")])
def test_parse_winner(text, want):
    assert parse_winner(text) == want


def test_combine_orders():
    assert combine_orders("a", "b") == 1.0 and combine_orders("b", "a") == 0.0
    for first, second in [("a", "a"), ("b", "b"), ("tie", "b"), ("a", "tie"), (None, "b"), ("a", None), (None, None)]:
        assert combine_orders(first, second) is None


def _shown(req: ChatRequest) -> tuple[str, str]:
    t = req.messages[0]["content"]
    return (re.search(r"Reply A:\n(.*?)\n\nReply B", t, re.S).group(1),
            re.search(r"Reply B:\n(.*?)\n\n", t, re.S).group(1))


def test_pairwise_shows_both_orders():
    reqs = PairwiseJudge().requests([Q], ["xx"], ["yy"])
    assert [_shown(r) for r in reqs] == [("xx", "yy"), ("yy", "xx")]
    assert all(r.template_version == pw_tpl.TEMPLATE_VERSION for r in reqs)


def test_position_biased_judge_gives_ties_not_labels():
    v, ab, ba = PairwiseJudge().judge(Scripted(lambda r, s: "Winner: A"), [Q, Q], ["x", "p"], ["y", "q"])
    assert v == [None, None] and ab == ["Winner: A"] * 2 and ba == ["Winner: A"] * 2


def test_consistent_judge_labels_and_unparseable_is_a_tie():
    def prefers_xx(req, s):
        a, _ = _shown(req)
        return "Winner: A" if a == "xx" else "Winner: B"

    v, _, _ = PairwiseJudge().judge(Scripted(prefers_xx), [Q] * 2, ["xx", "yy"], ["yy", "xx"])
    assert v == [1.0, 0.0]
    v, _, _ = PairwiseJudge().judge(Scripted(lambda r, s: "they are both fine"), [Q], ["xx"], ["yy"])
    assert v == [None]


def test_logprob_method_scores_the_letters_after_a_forced_prefix():
    def lp(req, completion):
        a, _ = _shown(req)
        assert req.assistant_prefix == "Winner:" and completion in (" A", " B")
        return -1.0 if (completion == " A") == (a == "good") else -3.0  # always prefers "good"

    judge = PairwiseJudge(method="logprob")
    v, ab, _ = judge.judge(Scripted(lp=lp), [Q, Q], ["good", "bad"], ["bad", "good"])
    assert v == [1.0, 0.0] and ab[0].startswith("Winner: A (logp A=-1.000")
    assert judge.template_version == "pairwise-judge-1+logprob"
    # A judge that always prefers the first slot flips with the order: a tie.
    v, _, _ = judge.judge(Scripted(lp=lambda r, c: 0.0 if c == " A" else -1.0), [Q], ["good"], ["bad"])
    assert v == [None]
    # Equal log-likelihoods are no preference at all.
    v, ab, _ = judge.judge(Scripted(lp=lambda r, c: -2.0), [Q], ["good"], ["bad"])
    assert v == [None] and "tie" in ab[0]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError):
        PairwiseJudge(method="vibes").judge(Scripted(lambda r, s: ""), [Q], ["x"], ["y"])
