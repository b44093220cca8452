"""Rejection sampling: RAFT top-k and pairs by hand, RSO acceptance against its formula, the target-count
loop and each budget, resume after a kill without duplicates, reward sources, and the YAML end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from prefdata.engines import CachedEngine
from prefdata.engines.base import Completion
from prefdata.engines.cache import RequestCache
from prefdata.generators import rejection as R
from prefdata.rewards import score as S
from prefdata.rewards.voters import RewardModelVoter
from prefdata.schema import CANDIDATE, validate

REPO = Path(__file__).resolve().parents[1]
REWARD = [3.0, 1.0, 4.0, 1.5]  # by sample index within a round


class Backend:
    """A backend whose text names (round, sample, prompt); raises after `die_after` samples (a kill)."""

    name, model_id = "scripted", "scripted-model"

    def __init__(self, tokens=5, die_after=None):
        self.tokens, self.die_after, self.samples = tokens, die_after, 0

    def _one(self, req, s):
        if self.die_after is not None and self.samples >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.samples += 1
        return Completion(text=f"reply o{req.seed_offset // R.ROUND_OFFSET} s{s} to {req.messages[-1]['content']}",
                          finish_reason="stop", num_tokens=self.tokens)

    def generate_samples(self, items, params, on_batch=None):
        outs = []
        for k, (req, s) in enumerate(items):
            outs.append(self._one(req, s))
            if on_batch:
                on_batch([k], outs[-1:])  # commit per sample, like a backend committing each batch
        return outs

    def generate(self, requests, params):
        return [[self._one(r, s) for s in range(params.n)] for r in requests]

    def score(self, requests, completions):
        return [0.0] * len(completions)


def prompts(n=3):
    return pa.Table.from_pylist([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}"}]}
                                 for i in range(n)])


def by_sample(_prompts, answers):
    return [REWARD[int(re.search(r" s(\d+) ", a).group(1)) % 4] for a in answers]


def run(cfg, n=3, engine=None, reward=by_sample, **kw):
    return R.generate(prompts(n), engine or Backend(), R.RejectionSamplingConfig(**cfg), reward=reward,
                      progress=False, **kw)


def texts(table, col):
    return [m[-1]["content"] for m in table.column(col).to_pylist()]


# ----------------------------------------------------------------------------- RAFT / best-of-N


def test_raft_top_k_sft_rows_by_hand():
    res = run({"output": "sft", "top_k": 2, "n_candidates": 4})
    assert res.kind == "completion" and res.rows.num_rows == 6
    validate(res.rows.select(["id", "prompt_id", "prompt", "completion"]), "completion")
    # Rewards 3, 1, 4, 1.5 -> the top 2 are sample 2 (4.0) then sample 0 (3.0), for every prompt.
    assert texts(res.rows, "completion")[:2] == ["reply o0 s2 to question 0", "reply o0 s0 to question 0"]
    assert res.rows.column("score").to_pylist() == [4.0, 3.0] * 3
    assert res.rows.column("engine").to_pylist() == ["scripted"] * 6
    sel = res.candidates.filter(pa.compute.field("selected")).column("sample").to_pylist()
    assert sorted(sel) == [0, 0, 0, 2, 2, 2]


def test_raft_pairs_best_vs_worst_and_best_vs_rest():
    res = run({"n_candidates": 4})
    assert res.kind == "pair" and res.rows.num_rows == 3
    assert texts(res.rows, "chosen")[0] == "reply o0 s2 to question 0"
    assert texts(res.rows, "rejected")[0] == "reply o0 s1 to question 0"
    assert res.rows.column("margin").to_pylist() == [3.0] * 3
    rest = run({"n_candidates": 4, "pairing": "best_vs_rest"}, n=1)
    assert [json.loads(m)["rejected_sample"] for m in rest.rows.column("meta").to_pylist()] == [0, 3, 1]
    assert rest.rows.column("margin").to_pylist() == [1.0, 2.5, 3.0]


def test_threshold_and_ties_are_drop_reasons():
    res = run({"output": "sft", "top_k": 4, "n_candidates": 4, "threshold": 2.0})
    assert res.rows.column("score").to_pylist() == [4.0, 3.0] * 3
    none = run({"n_candidates": 4, "threshold": 10.0})
    assert none.rows.num_rows == 0 and none.report["drop_reasons"] == {"chosen below the threshold": 3}
    tie = run({"n_candidates": 2}, reward=lambda p, a: [1.0] * len(a))
    assert tie.rows.num_rows == 0 and tie.report["drop_reasons"] == {"fewer than 2 candidates with different rewards": 3}


# ----------------------------------------------------------------------------- RSO


def test_rso_single_sweep_matches_the_formula():
    r = np.array([0.0, -0.5, -1.0, -2.0])
    beta = 0.5
    expect = np.exp((r - r.max()) / beta)  # 1, e^-1, e^-2, e^-4
    trials = 4000
    hits = np.stack([R.rso_accept(r, beta, R.prompt_rng(7, 0, f"p{i}")) for i in range(trials)])
    rate = hits.mean(axis=0)
    assert rate[0] == 1.0  # the best candidate is always accepted
    assert np.all(np.abs(rate - expect) < 4 * np.sqrt(expect * (1 - expect) / trials) + 1e-12), (rate, expect)
    # The same seed gives the same draws; another seed others.
    a = [R.rso_accept(r, beta, R.prompt_rng(7, 0, "p1")).tolist() for _ in range(2)]
    assert a[0] == a[1]


def test_rso_through_generate_records_probabilities_and_rates():
    res = run({"mode": "rso", "output": "sft", "n_candidates": 4, "beta": 1.0}, n=400)
    c = res.candidates
    assert c.schema == R.CANDIDATES and list(CANDIDATE) == list(c.schema)[:len(CANDIDATE)]
    sample = np.array(c.column("sample").to_pylist())
    prob = np.array(c.column("accept_prob").to_pylist())
    expect = np.exp((np.array(REWARD) - 4.0) / 1.0)  # r_max = 4 for every prompt
    assert np.allclose(prob, expect[sample])
    acc = np.array(c.column("accepted").to_pylist())
    for j in range(4):
        p = expect[j]
        assert abs(acc[sample == j].mean() - p) < 4 * np.sqrt(p * (1 - p) / 400) + 1e-12
    assert res.rows.num_rows == acc.sum()  # output sft keeps every accepted candidate
    assert res.rounds[0]["acceptance_rate"] == round(acc.mean(), 4)


def test_rso_sweep_until_m_and_tournament_pairs():
    rng = np.random.default_rng(0)
    r = np.array([0.0, -3.0, -6.0, -9.0, -12.0])
    got = R.rso_sweep(r, 0.5, 3, rng)
    assert len(got) == 3 and got[0] == 0 and len(set(got.tolist())) == 3  # each sweep takes at least its best
    assert sorted(R.rso_sweep(r, 0.5, 5, rng).tolist()) == [0, 1, 2, 3, 4]
    pairs = R.make_pairs(np.arange(5), np.array([5.0, 1.0, 3.0, 2.0, 4.0]), "tournament", np.random.default_rng(1))
    flat = [i for p in pairs for i in p]
    assert len(pairs) == 2 and len(set(flat)) == 4  # disjoint duels, one candidate left over
    assert all(np.array([5.0, 1.0, 3.0, 2.0, 4.0])[c] > np.array([5.0, 1.0, 3.0, 2.0, 4.0])[j] for c, j in pairs)
    res = run({"mode": "rso", "n_candidates": 4, "beta": 100.0, "rso_samples": 4}, n=2)  # all accepted
    assert res.rows.num_rows == 4 and res.rows.column("meta").to_pylist()[0].count("tournament")


# ----------------------------------------------------------------------------- target count and budgets


def test_target_count_stops_on_count_exactly():
    res = run({"n_candidates": 4, "target_rows": 5, "max_rounds": 10})
    assert res.rows.num_rows == 5 and res.stopped_by == "target_rows" and len(res.rounds) == 2
    assert res.report["trimmed_beyond_target"] == 1
    # Round 2 drew new samples: its rows are o1 texts, none repeats round 1.
    assert texts(res.rows, "chosen")[3:] == ["reply o1 s2 to question 0", "reply o1 s2 to question 1"]
    assert len(set(res.rows.column("id").to_pylist())) == 5


@pytest.mark.parametrize("budget, stopped, rounds, requests", [
    ({"max_rounds": 2}, "max_rounds", 2, 24),
    ({"max_rounds": 10, "max_requests": 30}, "max_requests", 3, 28),  # round 3 cut to the 1 prompt that fits
    ({"max_rounds": 10, "max_tokens_total": 3 * 4 * 16 + 2 * 4 * 16}, "max_tokens_total", 2, 20),
])
def test_target_count_stops_on_each_budget(budget, stopped, rounds, requests):
    # Every candidate uses its whole max_tokens (16): the token budget fits round 1 (3 prompts x 4 x 16)
    # and 2 prompts of round 2; a round never starts what its worst case could not pay for.
    res = run({"n_candidates": 4, "target_rows": 100, "max_tokens": 16, **budget},
              engine=Backend(tokens=16))
    assert res.stopped_by == stopped and len(res.rounds) == rounds and res.report["requests"] == requests
    if "max_tokens_total" in budget:
        assert res.report["tokens"] <= budget["max_tokens_total"] and res.rounds[1]["prompts"] == 2
    if "max_requests" in budget:
        assert res.report["requests"] <= budget["max_requests"] and res.rounds[-1]["prompts"] == 1


def test_step_card_shows_rounds_acceptance_and_what_stopped_it():
    from prefdata.engines.scripted import ScriptedEngine

    def fn(req, s):
        text = req.messages[-1]["content"]
        if "additive" not in text:
            return f"reply o{req.seed_offset // R.ROUND_OFFSET} s{s} to {text}"
        c = int(re.search(r" s(\d) ", text).group(1))  # the judged candidate's sample index
        return str(1 + 2 * c) if s == 0 else str(2 * c)  # two judgements: mean 0.5, 2.5, 4.5

    class Ctx:
        seed, eng = 0, ScriptedEngine(fn)

        def engine(self, override=None):
            return self.eng

    cfg = R.RejectionSamplingConfig(n_candidates=3, target_rows=4, max_rounds=5,
                                    reward={"type": "judge", "k": 2, "max_tokens": 4})
    res = R.run_step(cfg, prompts(3), Ctx())
    sec = dict(res.card_sections)
    assert "**Stopped by:** the target row count was reached after 2 rounds" in sec["Rounds and acceptance"]
    assert "| 1 | 3 | 9 | 9 | 9 | 100.0% | 9 | 3 | 3 |" in sec["Rounds and acceptance"]
    assert "2 rows past the target were left out" in sec["Rounds and acceptance"]
    assert res.side_tables["candidates"][0] == "completion" and res.kind == "pair"
    cands = res.side_tables["candidates"][1]
    assert cands.column("score").to_pylist()[:3] == [0.5, 2.5, 4.5]
    assert cands.column("judge_scores").to_pylist()[:3] == [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]]
    pairs = res.tables["train"]
    assert pairs.num_rows == 4 and pairs.column("margin").to_pylist() == [4.0] * 4
    assert res.lineage["templates"]["rubric_judge"].endswith("score-first")


# ----------------------------------------------------------------------------- resume


def test_resume_after_kill_gives_the_same_rows_without_duplicates(tmp_path):
    cfg = {"n_candidates": 4, "target_rows": 7, "max_rounds": 5}
    whole = run(cfg, engine=CachedEngine(Backend(), RequestCache(tmp_path / "a.sqlite")))
    cache = RequestCache(tmp_path / "b.sqlite")
    with pytest.raises(KeyboardInterrupt):  # killed in round 2, after 18 of its samples
        run(cfg, engine=CachedEngine(Backend(die_after=18), cache))
    again = Backend()
    resumed = run(cfg, engine=CachedEngine(again, cache))
    assert resumed.rows.column("id").to_pylist() == whole.rows.column("id").to_pylist()
    assert len(set(resumed.rows.column("id").to_pylist())) == 7
    assert resumed.candidates.column("id").to_pylist() == whole.candidates.column("id").to_pylist()
    assert again.samples == 3 * 4 * 3 - 18  # only the samples the kill lost were generated again


# ----------------------------------------------------------------------------- reward sources and config


def test_reward_model_scores_one_per_answer(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    m.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "rm")
    spec = RewardModelVoter(model=str(tmp_path / "rm"), batch_size=2)
    p = [[{"role": "user", "content": "hi"}]] * 3
    r = S.reward_model_scores(p, ["a", "a much longer answer here", "b"], spec, progress=False)
    assert r.shape == (3,) and np.isfinite(r).all() and len(set(r.round(6))) > 1
    # Batching changes nothing: alone, each answer scores the same.
    alone = [S.reward_model_scores(p[:1], [a], spec, progress=False)[0] for a in ["a", "b"]]
    assert np.allclose(alone, r[[0, 2]], atol=1e-5)
    # A whitened model (reward_norm.json beside it) is read on its training scale.
    from trainers.reward_norm import save_reward_norm

    save_reward_norm(tmp_path / "rm", np.array([r[0] - 1.0, r[0] + 1.0]))  # mean r[0], std 1
    assert np.allclose(S.reward_model_scores(p, ["a", "b"], spec, progress=False), [0.0, r[2] - r[0]], atol=1e-5)
    res = run({"n_candidates": 2, "reward": {"type": "reward_model", "model": spec.model}}, n=2, reward=None)
    assert res.scorer.startswith("rm:") and res.rows.num_rows + res.report["dropped"] == 2


def test_judge_logprob_is_the_expected_score():
    class Eng:
        name, model_id = "scripted", "judge"

        def score(self, reqs, comps):
            assert all(r.assistant_prefix for r in reqs)  # after the forced "Score: "
            return [np.log({"4": 0.75, "2": 0.25}.get(c, 1e-12)) for c in comps]

    sc = S.judge_scores([[{"role": "user", "content": "q"}]], ["an answer"], S.JudgeScorer(method="logprob"), Eng())
    assert sc.values[0] == pytest.approx(0.75 * 4 + 0.25 * 2, abs=1e-9)


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="top_k"):
        R.RejectionSamplingConfig(top_k=5, n_candidates=4)
    with pytest.raises(ValidationError, match="pairing"):
        R.RejectionSamplingConfig(output="sft", pairing="tournament")
    with pytest.raises(ValidationError, match="'heads' voter trains on the labelled pairs"):
        R.RejectionSamplingConfig(reward={"type": "heads"})
    with pytest.raises(ValidationError, match="Input tag 'rm'"):
        R.RejectionSamplingConfig(reward={"type": "rm"})


# ----------------------------------------------------------------------------- end to end


def test_yaml_end_to_end_cli(tiny_model, capsys):
    from prefdata import store
    from prefdata.testing import run_cli

    code, _, err = run_cli(capsys, "run", REPO / "pipelines" / "rejection_sampling.yaml",
                           "--set", f"engine.model={tiny_model}", "--set", "steps.rso.limit=2",
                           "--set", "steps.rso.config.n_candidates=2", "--set", "steps.rso.config.max_tokens=4",
                           "--set", "steps.rso.config.threshold=0", "--set", "steps.rso.config.target_rows=3",
                           "--set", "steps.rso.config.beta=100")
    assert code == 0, err
    v = store.resolve("rso-pairs@latest")
    assert store.load_table(v.ref).num_rows == 3
    card = v.card_path.read_text()
    assert "## Rounds and acceptance" in card and "**Stopped by:**" in card and "acceptance rate" in card
    cands = store.load_table("rso-pairs-candidates@latest")
    assert cands.num_rows == 8 and {"score", "accept_prob", "accepted", "selected", "round"} <= set(cands.column_names)
