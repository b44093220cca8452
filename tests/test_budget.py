"""Cost and budgets: prices per model, cost in the run summary, lineage and card (billed failures
included), and a budget that stops the run before it is exceeded and resumes with a larger one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from prefdata import costs, store
from prefdata.engines.cache import RequestCache
from prefdata.engines.faultserver import FaultServer
from prefdata.errors import ConfigError
from prefdata.testing import run_cli as cli


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_prices_exact_then_most_specific_pattern_and_user_file_wins(tmp_path):
    prices, version = costs.load_prices()
    assert costs.price_for(prices, "gpt-4o").input == 2.5
    assert costs.price_for(prices, "gpt-4o-mini-2024-07-18").output == 0.6  # gpt-4o-mini*, not gpt-4o-2024-*
    assert costs.price_for(prices, "no-such-model") is None and "prices.yaml" in version
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"version": "test", "models": {"gpt-4o": {"input": 1, "output": 2},
                                                                  "test-*": {"input": 3, "output": 4}}}))
    prices, version = costs.load_prices(user)
    assert costs.price_for(prices, "gpt-4o").usd(1_000_000, 500_000) == pytest.approx(1 + 1)
    assert costs.price_for(prices, "test-model").usd(10, 10) == pytest.approx(70 / 1e6)
    assert "mine.yaml test" in version


def test_a_bad_prices_file_names_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"m": {"input": -1, "output": 2}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml.*models\.m\.input"):
        costs.load_prices(bad)
    with pytest.raises(ConfigError, match="no such file"):
        costs.load_prices(tmp_path / "missing.yaml")


def _prices(tmp_path, inp=1.0, out=2.0) -> Path:
    p = tmp_path / "prices.yaml"
    p.write_text(yaml.safe_dump({"version": "t", "models": {"test-model": {"input": inp, "output": out}}}))
    return p


def _pipeline(tmp_path, url, n=6, *, budget=None, prices=True, shard_rows=None, inp=1.0, out=2.0) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": [{"role": "user", "content":
                                           f"Say something about item {i}."}]}) + "\n" for i in range(n)))
    spec = {"name": "budgeted", "engine": {"backend": "openai", "model": "test-model", "base_url": url,
                                           "progress": False, "concurrency": 2, "max_retries": 1, "timeout_s": 5.0},
            "steps": [{"name": "rlcd", "uses": "rlcd", "input": str(prompts), "output": "paid",
                       "config": {"max_tokens": 16}}]}
    if prices:
        spec["prices"] = str(_prices(tmp_path, inp, out))
    if budget:
        spec["budget"] = budget
    if shard_rows:
        spec["shard_rows"] = shard_rows
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_cost_is_in_the_summary_lineage_and_card(tmp_path, capsys):
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", _pipeline(tmp_path, s.url))
    assert code == 0, err
    v = store.resolve("paid")
    use, cost = v.manifest["lineage"]["engine_usage"], v.manifest["lineage"]["cost"]
    assert use["prompt_tokens"] == 10 * use["requests"] == 120  # the fault server bills 10 prompt tokens a reply
    # $1 per M input, $2 per M output, by hand from the counted tokens.
    assert cost["usd"] == pytest.approx((use["prompt_tokens"] * 1 + use["completion_tokens"] * 2) / 1e6)
    assert cost["models"]["test-model"]["completion_tokens"] == use["completion_tokens"]
    flat = " ".join(err.split())
    assert f"cost: ${cost['usd']:.4f} (test-model: 120 in" in flat and "run cost:" in flat
    card = v.card_path.read_text()
    assert "## Cost" in card and f"${cost['usd']:.4f}" in card


def test_an_unpriced_remote_model_has_unknown_cost_and_a_usd_budget_refuses_it(tmp_path, capsys):
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", _pipeline(tmp_path, s.url, n=2, prices=False))
        assert code == 0, err
        assert "cost: unknown" in " ".join(err.split())
        assert store.resolve("paid").manifest["lineage"]["cost"]["usd"] is None
        code, _, err = cli(capsys, "run", _pipeline(tmp_path, s.url, n=3, prices=False, budget={"usd": 1.0}))
    assert code == 1 and "Traceback" not in err
    assert "budget.usd is set but model 'test-model' (openai) has no price" in err.strip().splitlines()[-1]


def test_billed_failures_are_counted_in_tokens_and_cost():
    from prefdata.engines import EngineConfig, get_engine
    from prefdata.engines.base import ChatRequest, SamplingParams

    with FaultServer(fault_rate=1.0, faults=("empty",)) as s:
        eng = get_engine(EngineConfig(backend="openai", model="test-model", base_url=s.url, progress=False,
                                      cache=False, max_retries=2, timeout_s=5.0))
        out = eng.generate([ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)],
                           SamplingParams(max_tokens=8))
    assert all(o[0].finish_reason == "error" for o in out)
    # 3 requests x 3 attempts, each an empty reply that still carried usage (10 in, 3 out).
    assert eng.stats["billed_failures"] == 9 and eng.stats["prompt_tokens"] == 90
    assert eng.stats["completion_tokens"] == 27 and eng.stats["failed"] == 3
    meter = costs.Meter({"test-model": costs.Price(input=1, output=2)}, engines={"e": eng})
    assert meter.cost({"e": eng.stats})["usd"] == pytest.approx((90 + 54) / 1e6)


def test_a_budget_stops_before_it_is_exceeded_and_a_larger_one_resumes(tmp_path, capsys):
    home = Path(os.environ["PREFDATA_HOME"])
    # $1000 per M tokens both ways: a request's bound is about (prompt chars / 3 + 16) tokens.
    with FaultServer() as s:
        p = _pipeline(tmp_path, s.url, n=6, budget={"usd": 0.2}, inp=1000.0, out=1000.0)
        code, _, err = cli(capsys, "run", p)
        line = err.strip().splitlines()[-1]
        assert code == 1 and "Traceback" not in err and line.startswith("error: step 'rlcd' stopped before "
                                                                         "exceeding its budget (budget.usd 0.2")
        assert "rerun with a larger budget" in line and store.list_versions("paid") == []
        ledger = next((home / "runs").glob("budget-budgeted-*.json"))
        spent = json.loads(ledger.read_text())
        assert 0 < spent["usd"] <= 0.2  # stopped before, never after, the limit
        cached = len(RequestCache(home / "cache" / "requests.sqlite"))
        sent_first = sum(s.counts.values())
        assert 0 < cached == sent_first < 12
        # Rerun with a larger budget: the spend so far counts against it, the cache against the requests.
        code, _, err = cli(capsys, "run", p, "--set", "budget.usd=5")
        assert code == 0, err
        resent = sum(s.counts.values()) - sent_first
    assert resent == 12 - cached
    v = store.resolve("paid")
    assert v.manifest["splits"]["train"]["rows"] == 6
    assert not ledger.exists()  # the run completed: its budget starts afresh next time


def test_a_token_budget_stops_too(tmp_path, capsys):
    with FaultServer() as s:
        code, _, err = cli(capsys, "run", _pipeline(tmp_path, s.url, n=4, budget={"tokens": 60}))
    assert code == 1 and "budget.tokens 60: used" in err.strip().splitlines()[-1]
    ledger = json.loads(next((Path(os.environ["PREFDATA_HOME"]) / "runs").glob("budget-*.json")).read_text())
    assert ledger["tokens"] <= 60


def test_budget_keys_are_checked():
    with pytest.raises(Exception, match="usd"):
        costs.BudgetSpec(usd=0)
    with pytest.raises(Exception, match="extra"):
        costs.BudgetSpec(dollars=3)
