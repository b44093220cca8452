"""The OpenAI-compatible engine against our fault-injecting server on loopback."""

from __future__ import annotations

import time

import pytest

from prefdata.engines import EngineConfig, get_engine
from prefdata.engines.base import ChatRequest, SamplingParams, row_seed
from prefdata.engines.faultserver import FaultServer, answer
from prefdata.engines.openai import FLUSH_EVERY, OpenAIEngine

SENTINEL = "sk-sentinel-DO-NOT-LEAK-123456789"


def reqs(n):
    return [ChatRequest(messages=[{"role": "user", "content": f"prompt number {i}"}]) for i in range(n)]


def engine(url, tmp_path, name, **kw):
    cfg = {"backend": "openai", "model": "test-model", "base_url": url, "timeout_s": 0.5, "max_retries": 8,
           "concurrency": 32, "progress": False, "cache_path": str(tmp_path / f"{name}.sqlite"),
           "api_key_env": "PREFDATA_TEST_KEY"}
    return get_engine(EngineConfig(**{**cfg, **kw}))


def test_faults_recover_to_the_same_rows_without_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_TEST_KEY", SENTINEL)
    params = SamplingParams(max_tokens=16, seed=3)
    with FaultServer(fault_rate=0.0) as clean:
        want = [o[0].text for o in engine(clean.url, tmp_path, "clean").generate(reqs(1000), params)]
    with FaultServer(fault_rate=0.1, slow_s=1.0, seed=1) as faulty:
        eng = engine(faulty.url, tmp_path, "faulty")
        got = eng.generate(reqs(1000), params)
        injected = sum(v for k, v in faulty.counts.items() if k != "ok")
    texts = [o[0].text for o in got]
    failed = [i for i, o in enumerate(got) if o[0].finish_reason == "error"]
    assert injected > 50  # faults really happened
    assert len(got) == 1000 and not failed  # every prompt answered (retries absorbed the faults)
    assert texts == want  # same rows as the fault-free run
    assert len(set(texts)) == 1000  # no duplicates
    # the server saw the row's own seed: a hash of the request, seed and sample
    assert texts[5] == answer([{"role": "user", "content": "prompt number 5"}],
                              row_seed(reqs(6)[5], params, 0) & 0x7FFFFFFF)
    assert eng.stats["retries"] >= injected * 0.9


def test_exhausted_retries_are_recorded_not_dropped(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_TEST_KEY", SENTINEL)
    with FaultServer(fault_rate=1.0, faults=("500",)) as s:
        eng = engine(s.url, tmp_path, "fail", max_retries=1)
        out = eng.generate(reqs(3), SamplingParams(seed=0))
    assert all(o[0].finish_reason == "error" and "500" in o[0].error for o in out)
    assert eng.stats["failed"] == 3
    assert len(eng.cache) == 0  # failures never cached: a rerun retries them
    assert all(SENTINEL not in o[0].error for o in out)


def test_empty_choice_wrong_model_and_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_TEST_KEY", SENTINEL)
    with FaultServer(fault_rate=1.0, faults=("empty",)) as s:
        out = engine(s.url, tmp_path, "empty", max_retries=1).generate(reqs(1), SamplingParams())
        assert out[0][0].finish_reason == "error" and "no choices" in out[0][0].error
        out = engine(s.url, tmp_path, "wrong", model="nope").generate(reqs(1), SamplingParams())
        assert out[0][0].finish_reason == "error" and "not found" in out[0][0].error
    out = engine("http://127.0.0.1:9/v1", tmp_path, "down", max_retries=1).generate(reqs(1), SamplingParams())
    assert out[0][0].finish_reason == "error" and "Connection" in out[0][0].error


@pytest.mark.parametrize("http_client", ["openai", "lean"])
def test_a_burst_of_connections_is_served_without_retries(http_client):
    """256 connections opened at once: the server must accept them all (the stdlib server's backlog
    of 5 refused some), and the client must keep them alive rather than reconnecting."""
    with FaultServer(latency=0.05) as s:
        eng = OpenAIEngine(EngineConfig(backend="openai", model="test-model", base_url=s.url, concurrency=256,
                                        max_retries=0, timeout_s=10, progress=False), http_client=http_client)
        out = eng.generate_samples([(r, 0) for r in reqs(768)], SamplingParams(seed=1))
        eng.close()
    assert not [o for o in out if o.finish_reason == "error"]
    assert eng.stats["retries"] == 0 and eng.stats["failed"] == 0
    assert s.connections <= 256  # kept alive: at most one per request in flight


def test_results_reach_on_batch_in_groups_each_once(tmp_path):
    """The cache commits once per on_batch call: results arrive grouped, every position exactly once,
    each with its own completion."""
    calls = []
    with FaultServer(fault_rate=0.1, faults=("500", "drop"), seed=5) as s:
        eng = OpenAIEngine(EngineConfig(backend="openai", model="test-model", base_url=s.url, concurrency=16,
                                        progress=False, max_retries=8))
        items = [(r, 0) for r in reqs(300)]
        params = SamplingParams(seed=2)
        out = eng.generate_samples(items, params, on_batch=lambda p, c: calls.append((p, c)))
    positions = [p for ps, _ in calls for p in ps]
    assert sorted(positions) == list(range(300))
    assert len(calls) < 300 / 8 and max(len(ps) for ps, _ in calls) <= FLUSH_EVERY
    assert all(out[p] is c for ps, cs in calls for p, c in zip(ps, cs))
    assert out[7].text == answer([{"role": "user", "content": "prompt number 7"}],
                                 row_seed(items[7][0], params, 0) & 0x7FFFFFFF)
    assert eng.stats["requests"] == 300 and eng.stats["failed"] == 0 and eng.stats["retries"] > 0


@pytest.mark.parametrize("http_client", ["openai", "lean"])
def test_connections_live_across_calls_and_a_failed_call_leaves_nothing_running(http_client):
    """One loop and its keep-alive connections serve every call; a call stopped by an error cancels
    its workers, so they send nothing during the next call; close() ends it and a later call reopens."""
    with FaultServer(latency=0.02) as s:
        eng = OpenAIEngine(EngineConfig(backend="openai", model="test-model", base_url=s.url, concurrency=8,
                                        progress=False), http_client=http_client)
        params = SamplingParams(seed=4)
        first = eng.generate_samples([(r, 0) for r in reqs(40)], params)
        opened = s.connections
        assert 1 <= opened <= 8
        again = eng.generate_samples([(r, 0) for r in reqs(40)], params)
        assert s.connections == opened  # the same connections, not new ones
        assert [c.text for c in again] == [c.text for c in first]

        def boom(positions, comps):
            raise RuntimeError("cache is full")

        with pytest.raises(RuntimeError, match="cache is full"):
            eng.generate_samples([(r, 1) for r in reqs(400)], params, on_batch=boom)
        time.sleep(0.3)  # requests written just before the cancel reach the server a moment later
        sent = s.counts["ok"]
        assert sent < 400  # stopped early
        out = eng.generate_samples([(r, 2) for r in reqs(10)], params)
        assert s.counts["ok"] == sent + 10  # only this call's requests: no worker of the failed call ran on
        assert [c.text for c in out] == [answer(r.messages, row_seed(r, params, 2) & 0x7FFFFFFF) for r in reqs(10)]

        loop = eng._loop
        eng.close()
        assert loop.is_closed() and eng._loop is None
        eng.close()  # twice is harmless
        assert eng.generate_samples([(reqs(1)[0], 0)], params)[0].text == first[0].text
        assert s.connections > opened
        eng.close()


def test_no_items_no_requests():
    eng = OpenAIEngine(EngineConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", progress=False))
    assert eng.generate_samples([], SamplingParams()) == [] and eng.stats["failed"] == 0


def test_key_never_reaches_store_or_logs(tmp_path, monkeypatch, capsys):
    """Run a whole pipeline through the openai backend and grep everything it wrote for the key."""
    import yaml

    from prefdata import store
    from prefdata.pipeline import run_pipeline

    monkeypatch.setenv("PREFDATA_TEST_KEY", SENTINEL)
    with FaultServer(fault_rate=0.2, faults=("500",), seed=2) as s:
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump({"engine": {"backend": "openai", "model": "test-model", "base_url": s.url,
                                                "api_key_env": "PREFDATA_TEST_KEY", "timeout_s": 1.0},
                                     "steps": [{"name": "r", "uses": "rlcd", "input": "builtin:quickstart_prompts",
                                                "output": "oa", "limit": 4}]}))
        v = run_pipeline(p)["r"]
    assert store.load_table(v.ref).num_rows == 4
    captured = capsys.readouterr()
    assert SENTINEL not in captured.out + captured.err
    for f in store.home().rglob("*"):
        if f.is_file():
            assert SENTINEL.encode() not in f.read_bytes(), f


def test_missing_base_url_is_a_clear_error(monkeypatch):
    from prefdata.errors import PrefdataError

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PrefdataError, match="base_url"):
        get_engine(EngineConfig(backend="openai", model="m"))
