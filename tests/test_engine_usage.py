"""Engine accounting in the run report and the card, and the vLLM backend's checks that need no vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prefdata.engines import EngineConfig, get_engine
from prefdata.engines.faultserver import FaultServer
from prefdata.errors import PrefdataError
from prefdata.pipeline import run_pipeline


def test_failures_and_tokens_reach_lineage_and_card(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_TEST_KEY", "sk-usage-test-000000")
    with FaultServer(fault_rate=0.3, faults=("500",), seed=4) as s:
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump({"engine": {"backend": "openai", "model": "test-model", "base_url": s.url,
                                                "api_key_env": "PREFDATA_TEST_KEY", "max_retries": 0,
                                                "progress": False},
                                     "steps": [{"name": "r", "uses": "rlcd", "input": "builtin:quickstart_prompts",
                                                "output": "usage", "limit": 6, "max_failure_rate": 0.9,
                                                "config": {"max_retries": 3}}]}))
        v = run_pipeline(p)["r"]
        served = dict(s.counts)
    usage = v.manifest["lineage"]["engine_usage"]
    # Every request the server saw is accounted: answered ones plus the recorded failures.
    assert usage["requests"] == served.get("ok", 0) + served.get("500", 0)
    assert usage["failed"] == served["500"] > 0
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] == 10 * served["ok"]
    card = Path(v.card_path).read_text()
    assert "## Engine usage" in card
    assert f"| failed | {served['500']:,} |" in card


def test_vllm_refuses_a_model_too_large_for_memory(tmp_path):
    big = tmp_path / "huge-model"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "dtype": "bfloat16"}))
    with open(big / "model.safetensors", "wb") as f:  # sparse: 4 TiB on paper, nothing on disk
        f.truncate(4 << 40)
    with pytest.raises(PrefdataError, match=r"needs about 8192\.0 GiB for its float32 weights but only"):
        get_engine(EngineConfig(backend="vllm", model=str(big), cache=False))


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(PrefdataError, match="needs vLLM installed"):
            get_engine(EngineConfig(backend="vllm", model=tiny_model, cache=False))
    else:
        pytest.skip("vLLM is installed here; tests/integration covers the real engine")
