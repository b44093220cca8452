"""Reward-model engines (rewards/reward_model.py `engine:`, rewards/rm_backends.py) without vLLM.

The config block is checked, and the openai backend runs against a small /classify server on
127.0.0.1 that scores the token ids it receives with the real transformers model: the scores must
equal the transformers path's, through retries, and errors must be clear and keep the key out. The
vllm backends themselves are tested against real vLLM in tests/integration/test_vllm_reward.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from prefdata.errors import PrefdataError
from prefdata.rewards.reward_model import RewardModelVoter, conversation_rewards, load_tokenizer, token_ids
from prefdata.rewards.score import reward_model_scores
from prefdata.rewards.voters import VoterSpec, reward_model_votes
from prefdata.schema import validate

SENTINEL = "sk-rm-unit-sentinel-0123456789abcdef"


@pytest.fixture(scope="module")
def rm(tiny_model, tmp_path_factory) -> str:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm")
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


def pairs(n=6):
    rows = [{"prompt": f"question {i}: how do I bake bread?", "chosen": "Mix flour and water. " * (i + 1),
             "rejected": f"no idea {i}"} for i in range(n)]
    return validate(rows, "pair")


# ----------------------------------------------------------------------------- config


def test_no_engine_block_dumps_as_before():
    """A voter without `engine:` records and fingerprints exactly as before the block existed."""
    v = RewardModelVoter(model="m")
    assert v.engine.backend == "transformers"
    assert v.model_dump(mode="json") == {"type": "reward_model", "model": "m", "max_length": 1024, "batch_size": 8,
                                         "trust_remote_code": False}


def test_engine_block_dumps_only_given_keys_and_round_trips():
    v = TypeAdapter(VoterSpec).validate_python({"type": "reward_model", "model": "m", "engine": {
        "backend": "openai", "base_url": "http://127.0.0.1:8000", "timeout_s": 5}})
    assert v.model_dump(mode="json")["engine"] == {"backend": "openai", "base_url": "http://127.0.0.1:8000",
                                                   "timeout_s": 5.0}
    assert v.engine.max_retries == 3 and v.engine.api_key_env == "OPENAI_API_KEY"
    assert RewardModelVoter(**v.model_dump()) == v


@pytest.mark.parametrize("engine, match", [
    ({"base_url": "http://h:1"}, "base_url: for backend openai only"),
    ({"backend": "openai", "enforce_eager": True}, "enforce_eager: for backend vllm only"),
    ({"backend": "vllm", "timeout_s": 3, "served_model": "x"}, "served_model, timeout_s: for backend openai only"),
    ({"backend": "tgi"}, "backend"),
    ({"bakend": "vllm"}, "Extra inputs are not permitted"),
    ({"backend": "openai", "timeout_s": 0}, "greater than 0"),
    ({"backend": "vllm", "gpu_memory_utilization": 1.5}, "less than or equal to 1"),
    ({"backend": "openai", "api_key_env": SENTINEL}, "looks like an API key"),
    ({"backend": "openai", "api_key_env": "MY-KEY"}, "must name an environment variable"),
])
def test_engine_block_is_validated(engine, match):
    with pytest.raises(ValidationError, match=match):
        RewardModelVoter(model="m", engine=engine)


# ----------------------------------------------------------------------------- what the head reads


def test_token_ids_are_what_the_transformers_head_reads(rm, tmp_path):
    """The ids sent to vLLM, run unpadded through the HF model, give the transformers path's rewards:
    left truncation included, and trailing pad tokens cut where HF's head skips them."""
    import torch
    from transformers import AutoModelForSequenceClassification

    spec = RewardModelVoter(model=rm, max_length=24, batch_size=3)
    tok = load_tokenizer(rm)
    pad = tok.pad_token
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * k}] for k in range(1, 5)]
    convs.append([{"role": "user", "content": "long " * 80}, {"role": "assistant", "content": "the end"}])
    convs.append([{"role": "user", "content": "q"}, {"role": "assistant", "content": "padded" + pad + pad}])
    ids = token_ids(tok, spec, convs)
    assert max(map(len, ids)) <= 24
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    with torch.inference_mode():
        direct = [model(input_ids=torch.tensor([x])).logits[0, 0].item() for x in ids]
    (ref,) = conversation_rewards(spec, [convs], progress=False)
    assert np.allclose(direct, ref, atol=1e-5)

    # Without a chat template the "Role: text" transcript ends in the answer, so the pads really trail.
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "plain")
    plain = RewardModelVoter(model=str(tmp_path / "plain"), max_length=24)
    ids = token_ids(load_tokenizer(plain.model), plain, convs[-1:])
    assert ids[0][-1] != tok.pad_token_id
    with torch.inference_mode():
        direct = model(input_ids=torch.tensor(ids)).logits[0, 0].item()
    assert direct == pytest.approx(conversation_rewards(plain, [convs[-1:]], progress=False)[0][0], abs=1e-5)


# ----------------------------------------------------------------------------- openai backend


class FakeClassifyServer:
    """POST /classify on 127.0.0.1, scoring token ids with a transformers model. `faults` is a queue
    of what the next requests get instead of a good reply: 500, 429, 400, 404, drop, slow, two_labels."""

    def __init__(self, model_dir: str):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.faults: list[str] = []
        self.requests: list[tuple[str, dict, dict]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code: int, body: dict, headers: dict | None = None):
                raw = json.dumps(body).encode()
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(raw)),
                             **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append((self.path, dict(self.headers), body))
                    fault = fake.faults.pop(0) if fake.faults else None
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "slow":
                    time.sleep(1.0)
                if fault in ("500", "429", "400"):
                    msg = {"500": "boom", "429": "slow down", "400": "This model's maximum context length is 8"}[fault]
                    self.reply(int(fault), {"error": {"message": msg}}, {"Retry-After": "0"} if fault == "429" else {})
                    return
                if fault == "404" or self.path != "/classify":
                    self.reply(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    return
                with torch.inference_mode():
                    r = [fake.model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in body["input"]]
                data = [{"index": i, "label": "LABEL_0", "probs": [x, 0.0] if fault == "two_labels" else [x],
                         "num_classes": 1} for i, x in enumerate(r)]
                self.reply(200, {"object": "list", "model": body["model"], "data": data[::-1]})  # any order

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(rm):
    s = FakeClassifyServer(rm)
    yield s
    s.close()


def served(rm, url, **engine) -> RewardModelVoter:
    return RewardModelVoter(model=rm, batch_size=4, engine={"backend": "openai", "base_url": url, "timeout_s": 10,
                                                            "served_model": "rm", **engine})


def test_openai_backend_equals_transformers_and_sends_the_key_only_as_a_header(rm, server, monkeypatch):
    monkeypatch.setenv("PREFDATA_RM_KEY", SENTINEL)
    t = pairs()
    (ref,) = reward_model_votes(t, RewardModelVoter(model=rm), progress=False).values()
    (got,) = reward_model_votes(t, served(rm, server.url + "/v1", api_key_env="PREFDATA_RM_KEY", concurrency=2),
                                progress=False).values()
    assert np.allclose(got, ref, atol=1e-5) and np.abs(ref).max() > 0
    assert len(server.requests) == 2 * 2  # chosen then rejected, 6 texts each, 4 per request
    for path, headers, body in server.requests:
        assert path == "/classify" and body["model"] == "rm" and body["use_activation"] is False
        assert body["add_special_tokens"] is False and all(isinstance(x, int) for ids in body["input"] for x in ids)
        assert headers["Authorization"] == f"Bearer {SENTINEL}"
        assert SENTINEL not in json.dumps(body)
    # The rejection sampler's per-answer scorer goes through the same backend.
    prompts = [[{"role": "user", "content": "q"}]] * 2
    spec = served(rm, server.url)
    assert np.allclose(reward_model_scores(prompts, ["a", "bb"], spec, progress=False),
                       reward_model_scores(prompts, ["a", "bb"], RewardModelVoter(model=rm), progress=False), atol=1e-5)


def test_openai_backend_retries_transient_faults(rm, server):
    server.faults = ["500", "429", "drop", "slow"]
    t = pairs(4)
    (ref,) = reward_model_votes(t, RewardModelVoter(model=rm), progress=False).values()
    (got,) = reward_model_votes(t, served(rm, server.url, timeout_s=0.5, max_retries=4, concurrency=1),
                                progress=False).values()
    assert np.allclose(got, ref, atol=1e-5)
    assert len(server.requests) == 2 + 4  # two good batches plus one per fault


def test_openai_backend_gives_up_after_its_retries_with_the_key_kept_out(rm, server, monkeypatch):
    monkeypatch.setenv("PREFDATA_RM_KEY", SENTINEL)
    server.faults = ["500"] * 10
    with pytest.raises(PrefdataError, match=r"failed 2 times; last: InternalServerError: Error code: 500") as e:
        reward_model_votes(pairs(2), served(rm, server.url, max_retries=1, api_key_env="PREFDATA_RM_KEY",
                                           concurrency=1), progress=False)
    assert SENTINEL not in str(e.value) and "127.0.0.1" in str(e.value)
    server.faults = ["slow"] * 10
    with pytest.raises(PrefdataError, match="Request timed out"):
        reward_model_votes(pairs(1), served(rm, server.url, timeout_s=0.3, max_retries=0), progress=False)


@pytest.mark.parametrize("fault, match", [
    ("400", "maximum context length"),
    ("404", "is model 'rm' served there, with --runner pooling"),
    ("two_labels", "has 2 outputs; a reward model needs exactly 1"),
])
def test_openai_backend_errors_that_a_retry_cannot_fix(rm, server, fault, match):
    server.faults = [fault] * 10
    with pytest.raises(PrefdataError, match=match):
        reward_model_votes(pairs(2), served(rm, server.url, concurrency=1), progress=False)
    assert len(server.requests) == 1  # not retried


def test_openai_backend_reads_a_whitened_model_on_its_training_scale(rm, server, tmp_path):
    import shutil

    from trainers.reward_norm import save_reward_norm

    whitened = tmp_path / "whitened"
    shutil.copytree(rm, whitened)
    save_reward_norm(whitened, np.array([0.5, 1.5]))  # mean 1, std 0.5
    prompts, answers = [[{"role": "user", "content": "q"}]], ["an answer"]
    raw = reward_model_scores(prompts, answers, RewardModelVoter(model=rm), progress=False)
    got = reward_model_scores(prompts, answers, served(str(whitened), server.url), progress=False)
    assert got == pytest.approx((raw - 1.0) / 0.5, abs=1e-4)


def test_openai_backend_needs_a_base_url(rm):
    with pytest.raises(PrefdataError, match="set engine.base_url"):
        reward_model_votes(pairs(1), RewardModelVoter(model=rm, engine={"backend": "openai"}), progress=False)


def test_vllm_backend_without_vllm_says_how_to_get_it(rm):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here; tests/integration covers the backend")
    except ModuleNotFoundError:
        pass
    with pytest.raises(PrefdataError, match="needs vLLM installed"):
        reward_model_votes(pairs(1), RewardModelVoter(model=rm, engine={"backend": "vllm"}), progress=False)
