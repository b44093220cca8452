"""Issue 24: what a hostile or broken OpenAI-compatible server cannot do to a run, on both HTTP paths
(the official client, "openai", and prefdata's "lean" one).

Every server here is a loopback one on a background thread, and every case is bounded in time: a
server that trickles stops after a while, so even the code before the change ends (late).
Through the real CLI (`prefdata.cli.main`, in-process) wherever a user meets the failure.

The same issue's CSV-export and nesting-depth tests are in test_writers.py and test_config.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from prefdata.engines import CachedEngine, EngineConfig
from prefdata.engines.base import ChatRequest, SamplingParams
from prefdata.engines.faultserver import FaultServer, answer
from prefdata.engines.openai import OpenAIEngine
from prefdata.testing import run_cli as cli  # (exit code, stdout, stderr)

PATHS = ("openai", "lean")
KEY = "sk-proj-R3DACTME0123456789abcdef"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PREFDATA_TEST_KEY", KEY)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# ----------------------------------------------------------------------------- a scriptable server


class Scripted:
    """A loopback HTTP/1.1 server whose `handle(request_json, writer)` writes each reply itself and
    returns whether to keep the connection. Records every request body."""

    def __init__(self, handle):
        self.handle = handle
        self.requests: list[dict] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                req = json.loads(await reader.readexactly(length) or b"{}")
                self.requests.append(req)
                keep = await self.handle(req, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _run(self, ready):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def __enter__(self):
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def __exit__(self, *a):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def reply(status: int, body: bytes, *headers: str, chunked: bool = False) -> bytes:
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", *headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        step = 1 << 16
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                        for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def completion(req: dict) -> bytes:
    text = answer(req["messages"], req.get("seed"))
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": req.get("model"),
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}).encode()


def pipeline(tmp_path: Path, url: str, path: str, **engine) -> Path:
    p = tmp_path / "p.yaml"
    eng = {"backend": "openai", "model": "test-model", "base_url": url, "max_retries": 1, "timeout_s": 2.0,
           "progress": False, "api_key_env": "PREFDATA_TEST_KEY", "http_client": path, **engine}
    step = {"name": "rlcd", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": "api-pairs",
            "limit": 1, "config": {"max_tokens": 16, "max_retries": 1}}
    p.write_text(yaml.safe_dump({"name": "api", "engine": eng, "steps": [step]}))
    return p


def one_error_line(code: int, err: str) -> str:
    assert code == 1 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def engine(url: str, path: str, **kw) -> OpenAIEngine:
    cfg = {"backend": "openai", "model": "test-model", "base_url": url, "timeout_s": 5.0, "max_retries": 1,
           "concurrency": 4, "progress": False, "cache": False, "api_key_env": "PREFDATA_TEST_KEY"}
    return OpenAIEngine(EngineConfig(**{**cfg, **kw}), http_client=path)


def generate(eng: OpenAIEngine, requests: list[ChatRequest]):
    try:
        return [cs[0] for cs in CachedEngine(eng, None).generate(requests, SamplingParams(seed=1))]
    finally:
        eng.close()


def reqs(n: int, prefix: str | None = None) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"prompt {i}"}], assistant_prefix=prefix)
            for i in range(n)]


# ----------------------------------------------------------------------------- 1. a total deadline


TRICKLE_S = 0.25  # a byte this often: far inside the official client's per-read timeout
TRICKLE_FOR_S = 20.0  # then the server gives up, so the old code ends too (after ~2 x 20 s)


async def _trickle(writer, chunked: bool) -> bool:
    if chunked:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(int(TRICKLE_FOR_S / TRICKLE_S)):
        writer.write(b"1\r\n \r\n" if chunked else b" ")
        await writer.drain()
        await asyncio.sleep(TRICKLE_S)
    return False


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", PATHS)
def test_a_trickling_server_cannot_hold_a_request_past_timeout_s(tmp_path, capsys, path, chunked):
    """Content-Length 100000 (or chunked), then a byte every 0.25 s: with timeout_s 2 and
    max_retries 1 the run fails in about 2 x 2 s (plus backoff and start-up), not when the server
    stops trickling."""
    timeout_s, retries = 2.0, 1
    with Scripted(lambda req, w: _trickle(w, chunked)) as s:
        t0 = time.monotonic()
        code, _, err = cli(capsys, "run", pipeline(tmp_path, s.url, path, timeout_s=timeout_s, max_retries=retries))
        took = time.monotonic() - t0
    line = one_error_line(code, err)
    assert "APITimeoutError: Request timed out." in line, line
    assert took < timeout_s * (retries + 1) + 4.0, took
    assert len(s.requests) == 2 * (retries + 1)  # two requests per prompt (rlcd), each tried twice


# ----------------------------------------------------------------------------- 2. redirects


@pytest.mark.parametrize("path", PATHS)
def test_a_redirect_to_another_origin_is_refused_and_sends_nothing_there(tmp_path, capsys, path):
    with FaultServer(record=True) as elsewhere:
        async def redirect(req, w):
            w.write(reply(307, b"", f"Location: {elsewhere.url}/chat/completions?leak=1"))
            return True

        with Scripted(redirect) as s:
            code, _, err = cli(capsys, "run", pipeline(tmp_path, s.url, path))
        assert elsewhere.requests == []  # no prompt, no key reached the other origin
    line = one_error_line(code, err)
    assert "RedirectRefused" in line and "a redirect to another origin (http://127.0.0.1:" in line, line
    assert "leak=1" not in line and KEY not in err
    assert len(s.requests) == 2  # refused at once: a redirect is not retried


def test_the_official_client_still_follows_a_redirect_within_its_origin():
    async def handle(req, w):
        if len(handle.seen) == 0:
            handle.seen.append(1)
            w.write(reply(307, b"", "Location: /v2/chat/completions"))
        else:
            w.write(reply(200, completion(req)))
        return True

    handle.seen = []
    with Scripted(handle) as s:
        out = generate(engine(s.url, "openai"), reqs(1))
    assert out[0].error is None and out[0].text.startswith("answer ")


# ----------------------------------------------------------------------------- 3. errors in a 200


@pytest.mark.parametrize("path", PATHS)
def test_a_200_that_carries_an_error_shows_the_servers_message(tmp_path, capsys, path):
    async def handle(req, w):
        w.write(reply(200, b'{"error": {"message": "upstream model overloaded", "code": 503}}'))
        return True

    with Scripted(handle) as s:
        code, _, err = cli(capsys, "run", pipeline(tmp_path, s.url, path))
    line = one_error_line(code, err)
    assert "server returned an error instead of a completion: upstream model overloaded" in line, line
    assert "no choices" not in line


# ----------------------------------------------------------------------------- 4. reply size


def _big(n: int) -> bytes:
    return b'{"choices": [], "pad": "' + b"x" * n + b'"}'


@pytest.mark.parametrize("kind", ["content-length", "chunked", "gzip", "declared-only"])
@pytest.mark.parametrize("path", PATHS)
def test_a_reply_over_max_response_mb_is_refused_with_a_clear_error(path, kind):
    """2 MiB against max_response_mb 1: as sent, chunked, inflated from gzip, and a Content-Length of
    50 MB that is refused before any of it is read (the server then sends nothing: reading it
    would end in a timeout, not this error)."""
    body = _big(2 << 20)

    async def handle(req, w):
        if kind == "content-length":
            w.write(reply(200, body))
        elif kind == "chunked":
            w.write(reply(200, body, chunked=True))
        elif kind == "gzip":
            z = gzip.compress(body)
            w.write(reply(200, z, "Content-Encoding: gzip"))
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{")
            await w.drain()
            await asyncio.sleep(10)
            return False
        return True

    with Scripted(handle) as s:
        t0 = time.monotonic()
        out = generate(engine(s.url, path, max_response_mb=1.0, timeout_s=8.0), reqs(1))
        took = time.monotonic() - t0
    assert out[0].error == (f"ResponseTooLarge: the reply from http://127.0.0.1:{s.port} is over 1 MiB, the "
                            "limit set by engine.max_response_mb; raise it if such replies are expected"), out[0].error
    assert len(s.requests) == 1 and took < 5  # not retried, and not waited for


def test_max_response_mb_defaults_to_32_and_is_left_out_of_the_fingerprint():
    from pydantic import BaseModel

    from prefdata.pipeline import fingerprint

    assert EngineConfig().max_response_mb == 32.0

    class Step:
        uses, limit = "rlcd", None

    class NoConfig(BaseModel):
        pass

    base = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    assert len({fingerprint(Step(), NoConfig(), EngineConfig(**base, **kw), "d", 0)
                for kw in ({}, {"max_response_mb": 1.0})}) == 1


@pytest.mark.parametrize("path", PATHS)
def test_the_default_limit_passes_a_large_reply_and_refuses_a_larger_one(path):
    """A 20 MiB reply is fine under the default 32 MiB; a 40 MiB declared one is refused."""
    async def handle(req, w):
        if req["messages"][-1]["content"] == "prompt 0":
            data = json.loads(completion(req))
            data["pad"] = "x" * (20 << 20)
            w.write(reply(200, json.dumps(data).encode()))
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 41943040\r\n\r\n")
            return False
        return True

    with Scripted(handle) as s:
        ok, big = generate(engine(s.url, path, max_retries=0), reqs(2))
    assert ok.error is None and ok.text.startswith("answer ")
    assert big.error.startswith("ResponseTooLarge: ") and "over 32 MiB" in big.error


# ----------------------------------------------------------------------------- 5. 4xx, strict servers


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("status, body, says", [
    (422, b'{"detail": "Unexpected fields in the request: {\'seed\'}"}',
     "Error code: 422 - Unexpected fields in the request: {'seed'}"),
    (400, b'{"detail": [{"loc": ["body", "top_p"], "msg": "Input should be less than or equal to 1"}]}',
     "Error code: 400 - top_p: Input should be less than or equal to 1"),
    (400, b'{"error": "max_tokens is too large for this model"}', "Error code: 400 - max_tokens is too large"),
    (401, b"invalid api key", "Error code: 401 - invalid api key"),
    (400, b'{"error": {"message": "bad\\n request"}}', "Error code: 400 - bad request"),
])
def test_a_4xx_shows_what_the_server_said(tmp_path, capsys, path, status, body, says):
    async def handle(req, w):
        w.write(reply(status, body))
        return True

    with Scripted(handle) as s:
        code, _, err = cli(capsys, "run", pipeline(tmp_path, s.url, path))
    line = one_error_line(code, err)
    assert says in line, line


def _strict(req_json_fields=("continue_final_message", "add_generation_prompt")):
    """Like `transformers serve`: a 422 naming any vLLM-only field, else a normal answer."""
    async def handle(req, w):
        extra = {k for k in req_json_fields if k in req}
        if extra:
            w.write(reply(422, json.dumps({"detail": f"Unexpected fields in the request: {extra}"}).encode()))
        else:
            w.write(reply(200, completion(req)))
        return True

    return handle


@pytest.mark.parametrize("path", PATHS)
def test_a_strict_server_gets_assistant_prefixes_without_vllm_fields(path, capsys):
    """The first replies say 422 naming the fields: each such request is sent again at once without
    them (not counted as a retry), one warning, and the engine never sends them again."""
    with Scripted(_strict()) as s:
        eng = engine(s.url, path, max_retries=0, concurrency=4)
        try:
            first = [c[0] for c in CachedEngine(eng, None).generate(reqs(8, "Answer:"), SamplingParams(seed=1))]
            refused = sum("continue_final_message" in r for r in s.requests)
            second = [c[0] for c in CachedEngine(eng, None).generate(reqs(8, "Verdict:"), SamplingParams(seed=2))]
        finally:
            eng.close()
    assert all(c.error is None for c in first + second), [c.error for c in first + second]
    assert 1 <= refused <= 4  # only the requests already in flight when the first 422 came
    assert len(s.requests) == 16 + refused
    assert not any("continue_final_message" in r for r in s.requests[-8:])
    assert eng.stats["retries"] == 0 and eng.stats["failed"] == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "refused the vLLM fields" in err and "Unexpected fields" in err


@pytest.mark.parametrize("path", PATHS)
def test_self_reward_score_first_runs_against_a_strict_server(tmp_path, capsys, path):
    """Through the CLI: self_reward's judge with `judge_score_first` continues a "Score: " assistant
    prefix. A server that refuses vLLM's fields (422, as `transformers serve` does) still gets every
    request answered, one warning says what changed, and the run commits."""
    import hashlib

    from prefdata import store

    strict = _strict()

    async def handle(req, w):
        msgs = req["messages"]
        if msgs[-1]["role"] == "assistant" and "continue_final_message" not in req:
            # a judge's continuation of "Score: ": a score that differs between candidates
            score = 1 + hashlib.sha256(msgs[-2]["content"].encode()).digest()[0] % 5
            data = json.loads(completion(req))
            data["choices"][0]["message"]["content"] = f"{score}"
            w.write(reply(200, json.dumps(data).encode()))
            return True
        return await strict(req, w)

    with Scripted(handle) as s:
        p = tmp_path / "sr.yaml"
        eng = {"backend": "openai", "model": "test-model", "base_url": s.url, "max_retries": 0, "timeout_s": 5.0,
               "progress": False, "api_key_env": "PREFDATA_TEST_KEY", "http_client": path}
        step = {"name": "sr", "uses": "self_reward", "input": "builtin:quickstart_prompts", "output": "sr-pairs",
                "limit": 3,
                "config": {"n_candidates": 4, "judgements": 1, "judge_score_first": True, "max_tokens": 16,
                           "judge_max_tokens": 8}}
        p.write_text(yaml.safe_dump({"name": "sr", "engine": eng, "steps": [step]}))
        code, _, err = cli(capsys, "run", p)
    assert code == 0, err
    assert err.count("refused the vLLM fields") == 1 and "Unexpected fields in the request" in err, err
    v = store.resolve("sr-pairs")
    assert v.manifest["lineage"]["failures"]["failed"] == 0
    judged = [r for r in s.requests if r["messages"][-1]["role"] == "assistant"]
    assert judged and "continue_final_message" in judged[0]  # tried first, as vLLM needs it
    assert "continue_final_message" not in judged[-1]


@pytest.mark.parametrize("path", PATHS)
def test_a_server_that_accepts_vllm_fields_keeps_getting_them(path):
    with FaultServer(record=True) as s:
        out = generate(engine(s.url, path), reqs(3, "Answer:"))
    assert all(c.error is None for c in out)
    assert all(b.get("continue_final_message") is True and b.get("add_generation_prompt") is False
               for _, b in s.requests)
