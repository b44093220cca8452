"""Judges with a scripted engine: strict score parsing, repeated judgements, position swapping, and
the one pairwise judge shared by RLCD-Rescore, BPO evaluation, eval policy and the judge voter."""

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
    assert judge.template_version == "pairwise-judge-2+logprob"
    # A judge that always prefers the first slot flips with the order: a tie.
    v, _, _ = judge.judge(Scripted(lp=lambda r, c: 0.0 if c == " A" else -1.0), [Q], ["good"], ["bad"])
    assert v == [None]
    # Equal log-likelihoods are no preference at all.
    v, ab, _ = judge.judge(Scripted(lp=lambda r, c: -2.0), [Q], ["good"], ["bad"])
    assert v == [None] and "tie" in ab[0]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError):
        PairwiseJudge(method="vibes").judge(Scripted(lambda r, s: ""), [Q], ["x"], ["y"])


# ----------------------------------------------------------------------------- one pairwise judge

MULTI = [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "My cat is called Miso."},
         {"role": "assistant", "content": "Nice name."},
         {"role": "user", "content": "What is my cat called?"}]


@pytest.mark.parametrize("method", ["generate", "logprob"])
def test_multi_turn_context_reaches_the_judge(method):
    eng = Scripted(lambda r, s: "Winner: A", lp=lambda r, c: -1.0)
    PairwiseJudge(method=method).judge(eng, [MULTI], ["Miso."], ["I do not know."])
    for req in eng.requests:
        text = req.messages[0]["content"]
        # Every earlier turn, in order and with its role: the question alone cannot be judged.
        assert text.index("System: You are terse.") < text.index("User: My cat is called Miso.") \
            < text.index("Assistant: Nice name.") < text.index("User: What is my cat called?") < text.index("Reply A:")


def test_both_orders_go_to_the_engine_in_one_call():
    calls = []

    class Counting(Scripted):
        def generate(self, requests, params):
            calls.append(("generate", len(requests)))
            return super().generate(requests, params)

        def score(self, requests, completions):
            calls.append(("score", len(requests)))
            return super().score(requests, completions)

    eng = Counting(lambda r, s: "Winner: A", lp=lambda r, c: -1.0)
    PairwiseJudge().judge(eng, [Q] * 3, ["a", "b", "c"], ["x", "y", "z"])
    PairwiseJudge(method="logprob").judge(eng, [Q] * 3, ["a", "b", "c"], ["x", "y", "z"])
    assert calls == [("generate", 6), ("score", 12)]  # 2n requests; logprob scores " A" and " B" of each


def test_compare_gives_verdicts_per_order_and_the_mean_logit():
    # log p(" A") - log p(" B"): +3 when x is shown as A, and -1 when x is shown as B (the judge
    # likes slot A by +1 and x by +2): the mean logit of x over y is (3 + 1) / 2 = 2, the bias cancels.
    def lp(req, c):
        a, _ = _shown(req)
        logit = 3.0 if a == "x" else -1.0
        return logit if c == " A" else 0.0

    cmp = PairwiseJudge(method="logprob").compare(Scripted(lp=lp), [Q], ["x"], ["y"])
    assert cmp.first == ["a"] and cmp.second == ["b"] and cmp.verdicts == [1.0]
    assert cmp.logit.tolist() == [[3.0, -1.0]] and cmp.score.tolist() == [2.0]
    gen = PairwiseJudge().compare(Scripted(lambda r, s: "Winner: tie" if _shown(r)[0] == "x" else "nope"), [Q], ["x"], ["y"])
    assert gen.first == ["tie"] and gen.second == [None] and gen.verdicts == [None]
    with pytest.raises(ValueError, match="logprob"):
        _ = gen.score


def test_every_user_of_the_pairwise_judge_sends_the_one_template(monkeypatch):
    """RLCD-Rescore, BPO evaluation, eval policy and the judge voter: the same body, the same
    version (generate or +logprob), and the whole conversation."""
    import pyarrow as pa

    from prefdata.evals.policy import PolicyEvalConfig, run_policy_eval
    from prefdata.generators import bpo, rlcd
    from prefdata.rewards.voters import judge_votes
    from prefdata.schema import validate

    judged = []

    class Recording(Scripted):
        def generate(self, requests, params):
            judged.extend(r for r in requests if "Reply A:" in r.messages[0]["content"])
            return super().generate(requests, params)

        def score(self, requests, completions):
            judged.extend(requests)
            return super().score(requests, completions)

    def answer(req, s):
        return "Winner: A" if "Reply A:" in req.messages[0]["content"] else "Sure, here is one reply."

    def used(method):
        version = PairwiseJudge(method=method).template_version
        assert judged and all(r.template_version == version for r in judged), {r.template_version for r in judged}
        body = (pw_tpl.LOGPROB_PROMPT if method == "logprob" else pw_tpl.PROMPT).split("{conversation}")[0]
        assert all(r.messages[0]["content"].startswith(body) and "Assistant: Nice name." in r.messages[0]["content"]
                   for r in judged)
        judged.clear()

    eng = Recording(answer, lp=lambda r, c: -1.0)
    for method in ("generate", "logprob"):
        rlcd.rescore([{"prompt": MULTI, "chosen": [{"role": "assistant", "content": "Miso."}],
                       "rejected": [{"role": "assistant", "content": "No idea."}], "meta": {}}], eng, seed=0,
                     method=method)
        used(method)
        rows = pa.Table.from_pylist([{"id": "p0", "prompt": MULTI, "optimized_prompt": "Name my cat."}])
        bpo.evaluate(rows, eng, eng, bpo.EvaluateConfig(judge_method=method))
        used(method)
        run_policy_eval(eng, eng, eng, [MULTI], PolicyEvalConfig(judge_method=method, n_bootstrap=0))
        used(method)
    judge_votes(validate([{"prompt": MULTI, "chosen": "Miso.", "rejected": "No idea."}], "pair"), eng)
    used("logprob")


def test_new_template_requests_never_hit_old_cache_entries(tmp_path):
    """The template changed (version and text), so a cache filled by the old judge gives no hits."""
    from prefdata.engines import CachedEngine
    from prefdata.engines.cache import RequestCache

    class Backend:
        name, model_id = "scripted", "m"

        def __init__(self):
            self.scored = 0

        def score(self, requests, completions):
            self.scored += len(requests)
            return [-1.0] * len(requests)

    backend = Backend()
    eng = CachedEngine(backend, RequestCache(tmp_path / "requests.sqlite"))
    # What pairwise-judge-1 sent: the last user turn only, under its own version.
    old_body = "Compare two assistant replies to the same user request. Judge which one is more helpful, honest " \
               "and harmless; ignore length and order.\n\nUser request:\n{question}\n\nReply A:\n{a}\n\nReply B:\n{b}\n\n" \
               'Answer with the letter of the better reply after "Winner:".'
    old = [ChatRequest(messages=[{"role": "user", "content": old_body.format(question=Q[0]["content"], a=a, b=b)}],
                       assistant_prefix="Winner:", template_version="pairwise-judge-1+logprob")
           for a, b in (("x", "y"), ("y", "x"))]
    eng.score([r for r in old for _ in (0, 1)], [" A", " B"] * 2)
    assert backend.scored == 4
    PairwiseJudge(method="logprob").judge(eng, [Q], ["x"], ["y"])
    assert backend.scored == 8  # every new request was scored afresh
    PairwiseJudge(method="logprob").judge(eng, [Q], ["x"], ["y"])
    assert backend.scored == 8  # and is cached under its own key
    assert pw_tpl.TEMPLATE_VERSION != "pairwise-judge-1"


def test_rubric_judge_reads_the_whole_conversation():
    """rubric-judge-2: the pointwise judge sees every turn before the reply, as the pairwise judge does;
    with the last user turn alone, "What is my cat called?" could not be judged."""
    req = RubricJudge().requests([MULTI], ["Miso."])[0]
    text = req.messages[0]["content"]
    conv = pw_tpl.render_conversation(MULTI)
    assert f"Conversation:\n{conv}\n\nAssistant reply:\nMiso.\n\n" in text
    assert "System: You are terse." in text and "Assistant: Nice name." in text
    assert req.template_version == rubric_tpl.TEMPLATE_VERSION == "rubric-judge-2"
    assert RubricJudge(score_first=True).requests([MULTI], ["Miso."])[0].template_version == "rubric-judge-2+score-first"


def test_rubric_v2_never_hits_rubric_v1_cache_entries(tmp_path):
    from prefdata.engines import CachedEngine
    from prefdata.engines.base import SamplingParams
    from prefdata.engines.cache import RequestCache
    from prefdata.engines.scripted import ScriptedEngine

    backend = ScriptedEngine(lambda r, s: "Fine.\nScore: 4")
    eng = CachedEngine(backend, RequestCache(tmp_path / "requests.sqlite"))
    # What rubric-judge-1 sent for the same answer: the last user turn as "User request", its own version.
    old_text = rubric_tpl.RUBRIC.split("\n\nConversation:")[0].replace(
        "Rate the assistant's reply that continues the conversation below with the additive scale. The request is "
        "the user's last message, read in the light of everything said before it.",
        "Rate the assistant's reply to the user with the additive scale below.")
    old = ChatRequest(messages=[{"role": "user", "content": old_text + "\n\nUser request:\nWhat is my cat called?\n\n"
                                 "Assistant reply:\nMiso.\n\n" + rubric_tpl.JUSTIFY_THEN_SCORE}],
                      template_version="rubric-judge-1")
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=160, seed=0)
    eng.generate([old], params)
    assert len(backend.calls) == 2
    judge = RubricJudge(k=2)
    _, _, means = judge.judge(eng, [MULTI], ["Miso."])
    assert len(backend.calls) == 4 and means == [4.0]  # judged afresh, not replayed from the old entry
    judge.judge(eng, [MULTI], ["Miso."])
    assert len(backend.calls) == 4  # and cached under its own key


# ----------------------------------------------------------------------------- judge parsing edge cases (issue 13, item 7)


@pytest.mark.parametrize("text,want", [
    ("Winner: a tie", "tie"), ("Winner: A tie.", "tie"), ("Winner: it's a tie", "tie"), ("Winner: draw", "tie"),
    ("Winner: neither", "tie"), ("Winner: A and B", None), ("Winner: A/B", None), ("Winner: Assistant B", "b"),
    ("Winner: A", "a"), ("Winner: a, it is clearer", "a"), ("**Winner:** B.", "b"),
])
def test_winner_edge_cases(text, want):
    from prefdata.judges.pairwise import parse_winner

    assert parse_winner(text) == want


@pytest.mark.parametrize("cont,want", [("3-4", None), ("3 - 4", None), ("3\u20134", None), ("3 to 4", None),
                                       ("3 or 4", None), ("3/4", None), ("4/5", 4.0), ("3-star answer", 3.0),
                                       ("4 out of 5", 4.0)])
def test_score_ranges_are_not_scores(cont, want):
    from prefdata.judges.pointwise import parse_score, parse_score_first

    assert parse_score_first(cont) == want
    assert parse_score(f"Score: {cont}") in (want, None)  # the line form is stricter still
    assert parse_score("Score: 3-4") is None
