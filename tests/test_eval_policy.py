"""`prefdata eval policy` and `prefdata eval ranking` (issue 13, item 8): both-order judging, the
length-controlled win rate against a judge that only likes length, and ranking accuracies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefdata.engines.scripted import ScriptedEngine

N = 20
PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(N)]


def _by_prompt(answer):
    """A scripted policy: its answer to 'question i' is answer(i)."""
    return ScriptedEngine(lambda req, s: answer(int(req.messages[-1]["content"].split()[-1])))


def long_or_short(i: int) -> str:
    # Three times the baseline's length on 15 prompts, a third of it on 5.
    return ("a" * 90 if i < 15 else "a" * 10) + f" {i}"


def baseline(i: int) -> str:
    return "b" * 30 + f" {i}"


def _slots(content: str, answers: list[str]) -> tuple[str, str]:
    """The two answers in the judge prompt, in the order shown (A first); template-agnostic."""
    found = sorted((content.find(a), a) for a in answers if a in content)
    return found[0][1], found[-1][1]


def judge_engine(prefer, model):
    """A scripted judge: prefer(a, b) -> 'A' | 'B' | 'tie' given the texts shown as A and as B."""
    every = [model(i) for i in range(N)] + [baseline(i) for i in range(N)]

    def answer(req, s):
        a, b = _slots(req.messages[-1]["content"], every)
        return f"Reasoning.\nWinner: {prefer(a, b)}"

    return ScriptedEngine(answer, model_id="scripted-judge")


def run(prefer, model=long_or_short, **kw):
    from prefdata.evals.policy import PolicyEvalConfig, run_policy_eval

    cfg = PolicyEvalConfig(n_bootstrap=200, **kw)
    return run_policy_eval(_by_prompt(model), _by_prompt(baseline), judge_engine(prefer, model), PROMPTS, cfg)


def test_a_length_only_judge_wins_raw_but_not_length_controlled():
    r = run(lambda a, b: "A" if len(a) > len(b) else "B")
    assert (r["wins"], r["ties"], r["losses"]) == (15, 0, 5)
    assert r["win_rate"] == 0.75
    assert r["length_controlled_win_rate"] == pytest.approx(0.5, abs=0.05)
    assert r["length_slope"] > 1
    lo, hi = r["win_rate_ci95"]
    assert lo < 0.75 < hi


def test_a_quality_judge_keeps_its_win_rate_after_length_control():
    r = run(lambda a, b: "A" if a.startswith("a") else "B")  # always the model's answer, whatever its length
    assert r["wins"] == N and r["win_rate"] == 1.0
    assert r["length_controlled_win_rate"] > 0.95


def test_a_win_needs_both_orders():
    r = run(lambda a, b: "A")  # pure position bias: each side "wins" once
    assert (r["wins"], r["ties"], r["losses"]) == (0, N, 0) and r["win_rate"] == 0.5
    assert all(len(row["judge_raw"]) == 2 for row in r["rows"])


def test_one_sided_lengths_are_flagged_as_extrapolation():
    r = run(lambda a, b: "A" if len(a) > len(b) else "B", model=lambda i: "a" * 90 + f" {i}")
    assert r["win_rate"] == 1.0 and "extrapolation" in r["length_note"]


def test_identical_answers_are_said_in_one_sentence():
    """Issue 25 item 5: 0 wins, N ties, 0 losses without saying the two models answered alike."""
    from prefdata.evals.policy import format_report

    same = run(lambda a, b: "A", model=baseline)  # the policy is the baseline
    assert (same["ties"], same["identical_answers"]) == (N, N)
    assert "same answer to all 20 prompts" in same["identical_note"]
    assert f"{same['identical_note']}." in format_report(same)
    most = run(lambda a, b: "A", model=lambda i: baseline(i) if i < 15 else long_or_short(i))
    assert most["identical_answers"] == 15 and "same answer to 15 of 20 prompts" in format_report(most)
    few = run(lambda a, b: "A", model=lambda i: baseline(i) if i < 10 else long_or_short(i))  # half: not most
    assert few["identical_answers"] == 10 and "identical_note" not in few
    assert "same answer" not in format_report(few)


def test_ranking_accuracies_from_scripted_scores():
    from prefdata.evals.ranking import RankingEvalConfig, run_ranking_eval

    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": "c" * (5 + (i % 4 == 0) * 20)}],
             "rejected": [{"role": "assistant", "content": "r" * 10}]} for i, p in enumerate(PROMPTS)]

    class Policy(ScriptedEngine):  # the reference's log-probs, plus 8 nats on every chosen answer
        def score(self, requests, completions):
            return [-float(len(c)) + (8.0 if c.startswith("c") else 0.0) for c in completions]

    ref = ScriptedEngine([""])  # log p = -len(answer): the shorter answer is the likelier
    r = run_ranking_eval(Policy([""]), ref, rows, RankingEvalConfig(n_bootstrap=100))
    assert r["implicit_reward_accuracy"] == 1.0 and r["mean_implicit_margin"] == pytest.approx(8.0)
    assert r["reference_likelihood_accuracy"] == 0.75  # chosen is longer on every 4th pair
    assert r["policy_likelihood_accuracy"] == 0.75  # +8 does not overturn a 15-character deficit


def test_stats_bootstrap_and_balanced_fit():
    from prefdata.evals.policy import balance_weights
    from prefdata.evals.stats import bootstrap_interval, logistic_fit

    x = np.array([1.0, 1.0, 1.0, -1.0])
    assert balance_weights(x).tolist() == [2 / 3, 2 / 3, 2 / 3, 2.0]
    b0, _ = logistic_fit(np.zeros(4), np.array([1.0, 1.0, 0.0, 0.5]))
    assert 1 / (1 + np.exp(-b0)) == pytest.approx(0.625, abs=1e-6)  # intercept only: the mean outcome
    lo, hi = bootstrap_interval(4, lambda i: float(x[i].mean()), 200, 0)
    assert -1.0 <= lo < hi <= 1.0


# ----------------------------------------------------------------------------- CLI on the tiny model


def _cli(args):
    from typer.testing import CliRunner

    from prefdata.cli import _mount, app

    _mount()
    return CliRunner().invoke(app, args)


def test_cli_eval_policy_same_model_is_all_ties(tiny_model, tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"Say something about item {i}."}) + "\n" for i in range(4)))
    res = _cli(["eval", "policy", "--model", tiny_model, "--baseline", tiny_model, "--prompts", str(f),
                "--judge", tiny_model, "--judge-method", "logprob", "--max-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{"):])
    # Greedy, same weights: identical answers; the verdict can only follow the position, so every
    # prompt is a tie and nothing counts as a win.
    assert r["prompts"] == 4 and r["ties"] == 4 and r["win_rate"] == 0.5
    assert all(row["model_answer"] == row["baseline_answer"] for row in r["rows"])
    assert r["identical_answers"] == 4 and "same answer to all 4 prompts" in r["identical_note"]
    # The plain report says it in one sentence (the answers come from the request cache this time).
    res = _cli(["eval", "policy", "--model", tiny_model, "--baseline", tiny_model, "--prompts", str(f),
                "--judge", tiny_model, "--judge-method", "logprob", "--max-tokens", "6"])
    assert res.exit_code == 0, res.output
    assert "The model and the baseline gave the same answer to all 4 prompts" in " ".join(res.output.split())


def test_cli_eval_ranking_policy_equal_to_reference(tiny_model, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q {i}", "chosen": "a fine answer" + "!" * i, "rejected": "no"})
                         + "\n" for i in range(5)))
    out = tmp_path / "r.json"
    res = _cli(["eval", "ranking", "--model", tiny_model, "--ref", tiny_model, "--dataset", str(f),
                "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "implicit reward" in res.output
    r = json.loads(out.read_text())
    assert r["pairs"] == 5
    assert r["implicit_reward_accuracy"] == 0.0  # the policy is its reference: every margin is 0, a tie
    assert r["policy_likelihood_accuracy"] == r["reference_likelihood_accuracy"]
