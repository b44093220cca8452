"""The OpenAI-compatible engine against our fault-injecting server on loopback."""

from __future__ import annotations

import pytest

from prefdata.engines import EngineConfig, get_engine
from prefdata.engines.base import ChatRequest, SamplingParams
from prefdata.engines.faultserver import FaultServer, answer

SENTINEL = "sk-sentinel-DO-NOT-LEAK-123456789"


def reqs(n):
    return [ChatRequest(messages=[{"role": "user", "content": f"prompt number {i}"}]) for i in range(n)]


def engine(url, tmp_path, name, **kw):
    cfg = dict(backend="openai", model="test-model", base_url=url, timeout_s=0.5, max_retries=8, concurrency=32,
               progress=False, cache_path=str(tmp_path / f"{name}.sqlite"), api_key_env="PREFDATA_TEST_KEY")
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
    assert texts[5] == answer([{"role": "user", "content": "prompt number 5"}], 3)
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
