"""The lean HTTP path of the OpenAI engine (prefdata/engines/http.py) against the official client:
the same request bodies, completions, usage, retries and error texts, through faults; and what only
the lean client does itself (chunked, gzip and read-to-close replies, broken replies, its pool, TLS)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
import time

import pytest

from prefdata.engines import CachedEngine, EngineConfig
from prefdata.engines.base import ChatRequest, SamplingParams
from prefdata.engines.faultserver import FaultServer
from prefdata.engines.http import APIConnectionError, LeanClient, Origin, ProtocolError
from prefdata.engines.openai import LEAN_AT, OpenAIEngine
from prefdata.errors import PrefdataError

SENTINEL = "sk-sentinel-DO-NOT-LEAK-123456789"
PATHS = ("openai", "lean")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("PREFDATA_TEST_KEY", SENTINEL)
    for name in PROXY_VARS:  # a proxy in the test machine's environment would change auto's choice
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def reqs(n, tag="prompt"):
    return [ChatRequest(messages=[{"role": "user", "content": f"{tag} number {i}"}]) for i in range(n)]


def backend(url, path, **kw):
    cfg = {"backend": "openai", "model": "test-model", "base_url": url, "timeout_s": 0.5, "max_retries": 8,
           "concurrency": 16, "progress": False, "cache": False, "api_key_env": "PREFDATA_TEST_KEY"}
    return OpenAIEngine(EngineConfig(**{**cfg, **kw}), http_client=path)


def run(eng, requests, params):
    """Through CachedEngine (no cache) so n > 1 is split into samples as in a pipeline."""
    try:
        return CachedEngine(eng, None).generate(requests, params)
    finally:
        eng.close()


def usage(eng):
    return {k: v for k, v in eng.stats.items() if k != "last_call_s"}


def test_both_paths_send_the_same_bodies_and_get_the_same_completions():
    """n > 1, temperature, top_p, stop, max_tokens and logprobs: the server sees the same JSON from
    both clients, with the key as a bearer token, and both read back the same completions."""
    stop_params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_tokens=64, stop=("to:",), seed=11,
                                 logprobs=True)
    length_params = SamplingParams(n=2, max_tokens=2, seed=12)
    got = {}
    for path in PATHS:
        with FaultServer(truncate=True, record=True) as s:
            eng = backend(s.url, path)
            outs = (run(eng, reqs(10), stop_params), run(eng, reqs(10), length_params))
            got[path] = (outs, usage(eng), sorted(json.dumps(b, sort_keys=True) for _, b in s.requests),
                         {h.get("authorization") for h, _ in s.requests})
    assert got["openai"] == got["lean"]
    (stopped, cut), stats, bodies, auth = got["lean"]
    assert auth == {f"Bearer {SENTINEL}"}
    assert len(bodies) == 50 and len(set(bodies)) == 50  # one request per sample, each its own seed
    first = json.loads(bodies[0])
    assert {k: first.get(k) for k in ("model", "n", "stop")} in (
        {"model": "test-model", "n": 1, "stop": ["to:"]}, {"model": "test-model", "n": 1, "stop": None})
    assert sum(json.loads(b).get("logprobs") is True for b in bodies) == 30
    assert all(c.finish_reason == "stop" and c.text.endswith(" ") and "to:" not in c.text and c.logprob < 0
               for cs in stopped for c in cs)
    assert all(c.finish_reason == "length" and len(c.text.split()) == 2 and c.logprob is None
               for cs in cut for c in cs)
    assert len({c.text for c in stopped[0]}) == 3  # three different samples
    assert stats["prompt_tokens"] == 500 and stats["completion_tokens"] == sum(
        c.num_tokens for out in (stopped, cut) for cs in out for c in cs)


def test_faults_give_the_same_rows_and_usage_on_both_paths():
    params = SamplingParams(n=2, seed=5)
    with FaultServer() as clean:
        want = run(backend(clean.url, "openai"), reqs(100), params)
    for path in PATHS:
        # A timeout of 1 s, not 0.5: the official client at 64 in flight on a loaded machine timed out
        # fault-free requests at 0.5 s.
        with FaultServer(fault_rate=0.25, faults=("429", "500", "drop", "malformed", "slow"), slow_s=2.0,
                         seed=3) as s:
            eng = backend(s.url, path, concurrency=64, timeout_s=1.0)
            got = run(eng, reqs(100), params)
            injected = sum(v for k, v in s.counts.items() if k != "ok")
        assert got == want, path
        assert injected > 40 and len([k for k in s.counts if k != "ok"]) == 5, path  # every kind happened
        # One retry per fault, plus the odd fault-free request that timed out on a loaded machine.
        assert injected <= eng.stats["retries"] <= injected + 5 and eng.stats["failed"] == 0, path
        assert eng.stats["prompt_tokens"] == 10 * 200 and eng.stats["billed_failures"] == 0, path


def test_failures_read_the_same_on_both_paths():
    """Exhausted retries on 500 and 429, timeouts, an empty (billed) reply, a wrong model and a
    refused connection: the same error text and the same counts from either client."""
    cases = {"500": ({"fault_rate": 1.0, "faults": ("500",)}, {}),
             "429": ({"fault_rate": 1.0, "faults": ("429",)}, {}),
             "timeout": ({"fault_rate": 1.0, "faults": ("slow",), "slow_s": 1.0}, {"timeout_s": 0.2}),
             "empty": ({"fault_rate": 1.0, "faults": ("empty",)}, {}),
             "model": ({}, {"model": "nope"})}
    seen = {}
    for path in PATHS:
        for name, (server_kw, engine_kw) in cases.items():
            with FaultServer(**server_kw) as s:
                eng = backend(s.url, path, max_retries=1, **engine_kw)
                out = run(eng, reqs(2), SamplingParams(seed=1))
            seen[path, name] = ([c.error.replace(str(s.port), "PORT") for cs in out for c in cs], usage(eng))
        eng = backend("http://127.0.0.1:9/v1", path, max_retries=1)
        seen[path, "refused"] = ([c.error for cs in run(eng, reqs(1), SamplingParams()) for c in cs], usage(eng))
    for name in [*cases, "refused"]:
        assert seen["openai", name] == seen["lean", name], name
    errors = {name: seen["lean", name][0][0] for name in [*cases, "refused"]}
    assert errors["500"] == "InternalServerError: Error code: 500 - boom"
    assert errors["429"] == "RateLimitError: Error code: 429 - slow down"
    assert errors["timeout"] == "APITimeoutError: Request timed out."
    assert errors["empty"] == "ValueError: server returned no choices"
    assert errors["model"].startswith("model 'nope' not found on http://127.0.0.1:PORT/v1: NotFoundError: "
                                      "Error code: 404")
    assert errors["refused"] == "APIConnectionError: Connection error."
    assert seen["lean", "empty"][1]["billed_failures"] == 4 and seen["lean", "empty"][1]["completion_tokens"] == 12
    assert seen["lean", "500"][1] == {"requests": 2, "failed": 2, "retries": 2, "prompt_tokens": 0,
                                      "completion_tokens": 0, "billed_failures": 0}
    assert all(SENTINEL not in e for errs, _ in seen.values() for e in errs)


def test_chunked_replies_keep_their_connections():
    params = SamplingParams(seed=2)
    with FaultServer() as plain:
        want = run(backend(plain.url, "lean"), reqs(60), params)
    for path in PATHS:
        with FaultServer(chunked=True) as s:
            eng = backend(s.url, path, concurrency=8)
            assert run(eng, reqs(60), params) == want, path
            assert 1 <= s.connections <= 8, path  # each connection served many chunked replies
            assert eng.stats["retries"] == 0


def test_a_reply_that_is_not_http_is_one_clear_line():
    with FaultServer(fault_rate=1.0, faults=("garbage",)) as s:
        lean = run(backend(s.url, "lean", max_retries=1), reqs(1), SamplingParams())[0][0].error
        official = run(backend(s.url, "openai", max_retries=1), reqs(1), SamplingParams())[0][0].error
    assert lean == (f"ProtocolError: Connection error: http://127.0.0.1:{s.port} sent a malformed HTTP reply "
                    "(status line 'SSH-2.0-OpenSSH_9.6')")
    assert official == "APIConnectionError: Connection error."  # the official client does not say why


# -- the lean client alone, against canned replies --------------------------------------------

def canned(replies: list[bytes], close_after: bool = False):
    """POST once per reply to a server that answers each request with the next canned bytes;
    the results (body or exception) and how many connections the server accepted."""
    async def main():
        accepted = []

        async def serve(reader, writer):
            accepted.append(1)
            try:
                while replies:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    await reader.readexactly(length)
                    writer.write(replies.pop(0))
                    await writer.drain()
                    if close_after:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient(Origin(f"http://127.0.0.1:{port}/v1"), "EMPTY", 5.0, 4)
        results = []
        for _ in range(len(replies)):
            try:
                results.append(await client.post("/chat/completions", b"{}"))
            except Exception as err:  # noqa: BLE001 - the test looks at it
                results.append(err)
        await client.close()
        server.close()
        return results, len(accepted)

    return asyncio.run(main())


def ok(body: bytes, *headers: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def test_gzip_read_to_close_and_keep_alive_bodies():
    zipped = gzip.compress(b'{"a": 1}')
    (a, b), conns = canned([ok(zipped, b"Content-Encoding: gzip", b"Content-Length: %d" % len(zipped)),
                            ok(b"7\r\n{\"b\": 2\r\n1\r\n}\r\n0\r\n\r\n", b"Transfer-Encoding: chunked")])
    assert (a, b, conns) == (b'{"a": 1}', b'{"b": 2}', 1)  # one kept-alive connection for both
    (a, b), conns = canned([ok(b'{"c": 3}'), ok(b"{}", b"Content-Length: 2")], close_after=True)
    assert (a, b, conns) == (b'{"c": 3}', b"{}", 2)  # no length: read to the close, then a new connection
    # The server would keep the connection, but its reply said close: the client must not reuse it.
    (a, b), conns = canned([ok(b"{}", b"Content-Length: 2", b"Connection: close"), ok(b"{}", b"Content-Length: 2")])
    assert (a, b, conns) == (b"{}", b"{}", 2)


@pytest.mark.parametrize("reply, kind, says", [
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", ProtocolError, "status line 'SSH-2.0-OpenSSH_9.6'"),
    (b"HTTP/1.1 2OO OK\r\n\r\n", ProtocolError, "status line 'HTTP/1.1 2OO OK'"),
    (b"HTTP/1.1 100 Continue\r\n\r\n", ProtocolError, "interim status 100"),
    (ok(b"", b"Content-Length: 12abc"), ProtocolError, "Content-Length '12abc'"),
    (ok(b"", b"no colon here"), ProtocolError, "header line 'no colon here'"),
    (ok(b"zz\r\n", b"Transfer-Encoding: chunked"), ProtocolError, "chunk size line 'zz\\r\\n'"),
    (ok(b"3\r\nabcXX", b"Transfer-Encoding: chunked"), ProtocolError, "chunk data not followed by CRLF"),
    (ok(b"{}", b"Transfer-Encoding: gzip"), ProtocolError, "Transfer-Encoding 'gzip'"),
    (ok(b"{}", b"Content-Encoding: br", b"Content-Length: 2"), ProtocolError, "Content-Encoding 'br'"),
    (ok(b"{}", b"Content-Encoding: gzip", b"Content-Length: 2"), ProtocolError, "gzip body"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n", ProtocolError, "headers over 64 KiB"),
    (ok(b"{}", b"Content-Length: 100"), APIConnectionError, "Connection error."),  # cut short
])
def test_broken_replies_raise_one_line_naming_the_server(reply, kind, says):
    (err,), _ = canned([reply], close_after=True)
    assert type(err) is kind and isinstance(err, PrefdataError)
    assert says in str(err) and "\n" not in str(err)
    if kind is ProtocolError:
        assert str(err).startswith("Connection error: http://127.0.0.1:") and "sent a malformed HTTP reply" in str(err)


def test_a_status_error_keeps_its_headers_and_openai_wording():
    body = b'{"error": {"message": "over\\n load"}}'  # a message with a newline in it
    (err,), _ = canned([b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)])
    assert type(err).__name__ == "InternalServerError" and err.status_code == 503
    assert str(err) == "Error code: 503 - over load" and err.headers["retry-after"] == "7"


# -- pool, choice of path, configuration errors ------------------------------------------------

def test_idle_connections_the_server_closed_are_not_reused():
    """A server's keep-alive timeout closes idle connections between calls (uvicorn's is 5 s):
    the next call must open fresh ones instead of failing on the dead ones."""
    with FaultServer() as s:
        eng = backend(s.url, "lean", concurrency=8)
        first = eng.generate_samples([(r, 0) for r in reqs(40)], SamplingParams(seed=1))
        opened = s.connections
        assert 1 <= opened <= 8
        assert s.close_idle() == opened
        time.sleep(0.2)  # the FINs reach the client's loop when it next runs
        again = eng.generate_samples([(r, 0) for r in reqs(40)], SamplingParams(seed=1))
        eng.close()
    assert [c.text for c in again] == [c.text for c in first]
    assert eng.stats["retries"] == 0 and eng.stats["failed"] == 0
    assert opened < s.connections <= 2 * opened


def test_a_connection_closed_while_the_loop_was_busy_is_not_reused():
    """The close can arrive while the event loop is busy and has not read it yet: the pool's poll of
    the socket must still see it, or the request goes out on a dead connection and fails."""
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "seed": 1}).encode()
    with FaultServer() as s:
        async def main():
            client = LeanClient(Origin(s.url), "EMPTY", 5.0, 2)
            first = await client.post("/chat/completions", body)
            assert s.close_idle() == 1
            time.sleep(0.2)  # noqa: ASYNC251 - blocking on purpose: the close reaches the socket, not the loop
            second = await client.post("/chat/completions", body)
            await client.close()
            return first, second

        first, second = asyncio.run(main())
    assert first == second and s.connections == 2


def test_auto_takes_the_lean_client_from_lean_at_in_flight_unless_a_proxy_applies(monkeypatch):
    def path(concurrency, choice=None, url="http://127.0.0.1:9/v1"):
        return backend(url, choice, concurrency=concurrency).http_client

    assert LEAN_AT == 64
    assert [path(c) for c in (1, 16, 63, 64, 256)] == ["openai"] * 3 + ["lean"] * 2
    assert path(256, "openai") == "openai" and path(1, "lean") == "lean"
    monkeypatch.setenv("HTTPS_PROXY", "http://user:proxypass@proxy.internal:3128")
    assert path(256, url="https://api.example.com/v1") == "openai"  # only the official client proxies
    assert path(256, url="http://127.0.0.1:9/v1") == "lean"  # the https proxy does not apply to http
    with pytest.raises(PrefdataError, match="does not go through proxies, and HTTPS_PROXY applies") as e:
        path(256, "lean", url="https://api.example.com/v1")
    assert "proxypass" not in str(e.value)
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert path(256, url="https://api.example.com/v1") == "lean"
    # URLs only the official client serves: auto keeps it, an explicit lean says why not
    assert path(256, url="https://api.example.com/v1?api-version=2024") == "openai"
    assert path(256, url="http://user:pw@127.0.0.1:9/v1") == "openai"


@pytest.mark.parametrize("url, says", [
    ("ftp://127.0.0.1/v1", "needs an http:// or https:// URL"),
    ("http://127.0.0.1:99999/v1", "Port out of range"),
    ("http://admin:hunter2pass@127.0.0.1/v1", "does not send credentials"),
    ("https://api.example.com/v1?api-version=2024", "no query string"),
])
def test_a_bad_base_url_for_the_lean_client_is_one_line(url, says):
    with pytest.raises(PrefdataError, match=says) as e:
        backend(url, "lean")
    assert "hunter2pass" not in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_http_client_and_a_key_a_header_cannot_carry(monkeypatch):
    with pytest.raises(PrefdataError, match="'fast' is not one of auto, openai, lean"):
        backend("http://127.0.0.1:9/v1", "fast")
    monkeypatch.setenv("PREFDATA_TEST_KEY", "sk-abc\r\nX-Evil: 1")  # header injection
    for path in PATHS:
        with pytest.raises(PrefdataError, match=r"key in \$PREFDATA_TEST_KEY has characters") as e:
            backend("http://127.0.0.1:9/v1", path)
        assert "sk-abc" not in str(e.value)
    with pytest.raises(PrefdataError, match="cannot carry") as e:
        LeanClient(Origin("http://127.0.0.1:9/v1"), "sk-abc\r\nX-Evil: 1", 1.0, 1)
    assert "sk-abc" not in str(e.value)
    client = LeanClient(Origin("http://127.0.0.1:9/v1"), SENTINEL, 1.0, 1)
    assert SENTINEL not in repr(client) and SENTINEL not in str(vars(client).get("origin"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_checks_the_certificate_and_honours_ssl_cert_file(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FaultServer(tls=tls) as s:
        untrusted = run(backend(s.url, "lean", max_retries=0), reqs(1), SamplingParams())[0][0].error
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the client makes its SSL context
        trusted = run(backend(s.url, "lean", max_retries=0), reqs(3), SamplingParams(seed=4))
    assert untrusted.startswith(f"APIConnectionError: Connection error: TLS certificate of https://127.0.0.1:{s.port} "
                                "not trusted (") and "\n" not in untrusted
    assert all(c.finish_reason == "stop" and c.text.startswith("answer ") for cs in trusted for c in cs)


@pytest.mark.skipif("http_client" not in EngineConfig.model_fields,
                    reason="EngineConfig.http_client not added yet (prefdata/engines/__init__.py, lead's file)")
def test_http_client_is_an_engine_config_field_and_not_in_the_fingerprint():
    from prefdata.engines import get_engine
    from prefdata.pipeline import fingerprint

    base = {"backend": "openai", "model": "test-model", "base_url": "http://127.0.0.1:9/v1", "cache": False}
    assert get_engine(EngineConfig(**base, http_client="lean")).backend.http_client == "lean"
    assert get_engine(EngineConfig(**base, concurrency=256)).backend.http_client == "lean"  # auto
    assert get_engine(EngineConfig(**base, concurrency=256, http_client="openai")).backend.http_client == "openai"
    with pytest.raises(ValueError):
        EngineConfig(**base, http_client="fast")

    from pydantic import BaseModel

    class Step:
        uses, limit = "rlcd", None

    class NoConfig(BaseModel):
        pass

    fps = {fingerprint(Step(), NoConfig(), EngineConfig(**base, http_client=c), "digest", 0) for c in
           ("auto", "openai", "lean")}
    assert len(fps) == 1  # which client fetched the rows does not change them


def test_old_objects_are_frozen_out_of_gc_only_during_a_call():
    import gc

    seen = []
    with FaultServer() as s:
        eng = backend(s.url, "lean")
        eng.generate_samples([(r, 0) for r in reqs(5)], SamplingParams(),
                             on_batch=lambda p, c: seen.append(gc.get_freeze_count()))
        assert seen and min(seen) > 0 and gc.get_freeze_count() == 0  # frozen during, given back after
        gc.freeze()  # someone else's freeze (a pre-fork server) is theirs to undo
        try:
            eng.generate_samples([(r, 1) for r in reqs(5)], SamplingParams())
            assert gc.get_freeze_count() > 0  # still frozen: the engine did not unfreeze it
        finally:
            gc.unfreeze()
        eng.close()
