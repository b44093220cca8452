"""Any OpenAI-compatible chat server (vLLM serve, llama.cpp server, hosted APIs) as an engine.

The official `openai` async client with its own retries turned off: we retry 429, 5xx, timeouts,
dropped connections and malformed responses ourselves, with exponential backoff plus jitter,
honouring `Retry-After`, up to `max_retries`. A request that still fails becomes a Completion with
finish_reason "error" and the error text: it is never cached, never silently dropped, and the
generators count it as a failed attempt.

The API key is read from the environment variable named by `api_key_env` and is only ever handed to
the client: it is not part of the config, the cache key, the lineage or any error message.
Each (request, sample) is its own call seeded with `row_seed` (a hash of the request, seed and sample,
cut to 31 bits because servers differ in the integer range they accept), so a sample's text depends
only on the request, as the cache requires, and two prompts never share a seed: with one seed for
all, vLLM gave near-identical answers to prompts that differ in a word.

Efficiency (benchmarks/bench_engines.py; profiled with py-spy): one event loop runs every request,
so the client's CPU per request is what bounds throughput. `concurrency` worker tasks pull from the
list (no coroutine per item); each pool of keep-alive connections is sized to its workers (the
default keeps 100, so at 256 in flight connections were closed and reopened); the request goes
through the client's documented `post()` with a plain JSON body (the typed `create()` spent ~20% of
the client's CPU walking TypedDict annotations to transform messages that are already wire format)
and the reply is parsed with `json.loads` instead of into pydantic models; and the connections are
split over one client per POOL workers, because httpcore rescans every connection in its pool when a
request starts or ends (a third of the client's CPU at 256 connections in one pool). The engine keeps
one event loop and its clients for its life (`close()` ends them early), so connections stay open
from one call to the next.

Two HTTP paths, chosen by `http_client` (EngineConfig; the constructor's argument overrides it):
"openai", the official client as above, and "lean", prefdata/engines/http.py, asyncio streams with a
keep-alive pool (0.22-0.30 ms of client CPU per request against the official client's 2.6-3.3 in the
same benchmark run). "auto" takes the official client below LEAN_AT requests in flight, where its
CPU is not the limit and it brings proxy support and the most widely used connection handling, and
the lean one at or above, where one event loop cannot carry the official client's CPU; auto also
keeps the official client when a proxy variable applies to the server (the lean one has no proxy
support) or the base URL carries credentials or a query string. Both paths share everything but the
transport: the request body, the retry policy, usage accounting, and error texts (the lean client's
errors carry openai's class names and messages).

What a hostile or broken server cannot do, on either path (tests/test_openai_engine_faults.py):
- hold a request past `timeout_s`: every attempt has one deadline, connect to the last byte (the
  official client's own timeout is per read, which a server trickling a byte a second never trips);
- send the prompts elsewhere: a redirect to another origin is refused (RedirectRefused, not retried);
- fill memory: a reply body over `max_response_mb` is refused (ResponseTooLarge, not retried);
- hide its reason: a 4xx/5xx shows what the server said (error.message, an error string, FastAPI's
  `detail`, a short text body), and a 200 whose body is {"error": ...} says so instead of "no choices";
- break assistant prefixes: vLLM's `continue_final_message`/`add_generation_prompt` are sent until a
  server refuses them by name with a 400/422; the request is then resent at once without them, and
  the engine sends them no more (one warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import threading
import time
import urllib.parse
import weakref

from prefdata.engines.base import ChatRequest, Completion, SamplingParams, row_seed
from prefdata.engines.http import (
    MAX_BODY,
    APITimeoutError,
    redirect_refused,
    server_message,
    status_message,
    too_large,
)
from prefdata.errors import PrefdataError
from prefdata.redact import redact

# Completions are handed to `on_batch` (the request cache: one sqlite commit per call) in groups of
# this many, or after this many seconds, and at the end: a kill loses at most that small buffer plus
# the requests in flight, which a rerun simply asks again.
FLUSH_EVERY = 64
FLUSH_S = 0.5
POOL = 32  # workers (and keep-alive connections) per official client
# http_client auto: the lean client at or above this many requests in flight. Measured (RESULTS.md)
# the official client holds 0.9 of the latency ceiling up to 64 and falls to 0.65 at 256.
LEAN_AT = 64
HTTP_CLIENTS = ("auto", "openai", "lean")


def _redact(text: str, secret: str | None) -> str:
    text = str(text)
    if secret and secret != "EMPTY":
        text = text.replace(secret, "***")
    return redact(text)


def _parse_chat(content: bytes) -> tuple[str, str, int, int, float | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens, summed token logprob or None) of a chat
    completion body. Anything unusable raises ValueError, which is retried like any other bad reply."""
    data = json.loads(content)
    try:
        choices = data.get("choices")
        if not choices and data.get("error") is not None:
            # A 200 that carries an error (proxies and gateways relaying an upstream failure).
            said = server_message(content)
            raise ValueError("server returned an error instead of a completion" + (f": {said}" if said else ""))
        if not choices:
            raise ValueError("server returned no choices")
        choice = choices[0]
        text = (choice.get("message") or {}).get("content")
        if text is None:
            raise ValueError("server returned an empty choice")
        usage = data.get("usage") or {}
        # OpenAI's shape: logprobs.content is one {token, logprob} per generated token; a server
        # that ignores the request sends null, which stays None rather than a made-up 0.
        tokens = (choice.get("logprobs") or {}).get("content")
        logprob = float(sum(t["logprob"] for t in tokens)) if tokens else None
        return (text, choice.get("finish_reason") or "stop", usage.get("prompt_tokens") or 0,
                usage.get("completion_tokens") or 0, logprob)
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise ValueError(f"malformed chat completion ({type(err).__name__}: {err})") from None


def _shown(url: str) -> str:
    """scheme://host[:port] of a URL, as the lean client's Origin.shown writes it (no credentials,
    path or query), so both clients' messages name a server alike."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port
    except ValueError:
        port = None
    host = u.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{u.scheme}://{host}" + (f":{port}" if port is not None else "")


def _origin_of(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    return scheme.lower(), host.lower(), port or (443 if scheme.lower() == "https" else 80)


def _response_guard(base_url: str, limit: int, httpx):
    """An httpx response hook for the official client (it runs for every reply, redirects and
    replies through a proxy included, before the body is read): a redirect to another origin than
    base_url's is refused (httpx would otherwise re-send the prompts and the key there), a declared
    Content-Length over `limit` is refused at once, and the body stream is capped at `limit` bytes,
    error bodies included. Built from plain values, so the client holds no reference to the engine."""
    u = urllib.parse.urlsplit(base_url)
    try:
        base_port = u.port
    except ValueError:
        base_port = None
    base = _origin_of(u.scheme, u.hostname or "", base_port)
    shown = _shown(base_url)

    class Capped(httpx.AsyncByteStream):
        def __init__(self, inner):
            self.inner = inner

        async def __aiter__(self):
            total = 0
            async for chunk in self.inner:
                total += len(chunk)
                if total > limit:
                    raise too_large(shown, limit)
                yield chunk

        async def aclose(self):
            await self.inner.aclose()

    async def hook(response) -> None:
        if response.has_redirect_location:
            target = response.request.url.join(response.headers["location"])
            if _origin_of(target.scheme, target.host, target.port) != base:
                raise redirect_refused(shown, response.status_code, str(target), same_origin=False)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large(shown, limit)
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = Capped(response.stream)

    return hook


async def _read_capped(response, limit: int, shown: str) -> bytes:
    """The decoded body of a streamed httpx response, refused past `limit` bytes (a gzip body is
    capped again once inflated)."""
    parts, total = [], 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise too_large(shown, limit)
        parts.append(chunk)
    return b"".join(parts)


def _status_body(err) -> bytes | None:
    """The raw body of a status error from either client (None when there is none to read)."""
    body = getattr(err, "body", None)
    if isinstance(body, (bytes, bytearray)):  # the lean client's
        return bytes(body)
    resp = getattr(err, "response", None)  # openai's: the httpx response, read before the error was raised
    try:
        return resp.content if resp is not None else None
    except Exception:  # noqa: BLE001 - not read: fall back to what openai parsed
        return json.dumps(body).encode() if body is not None else None


# The fields vLLM needs to continue an assistant turn; strict servers (`transformers serve`) refuse them.
CONTINUE_FIELDS = ("continue_final_message", "add_generation_prompt")


def _billed_usage(content: bytes) -> tuple[int, int]:
    """The usage block of a reply that `_parse_chat` refused: the server generated it and bills it."""
    try:
        usage = json.loads(content).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0, 0


@contextlib.contextmanager
def _old_objects_frozen():
    """Keep the objects that exist before a call out of the garbage collector's full passes during
    it. Such a pass walks every tracked object (about 230,000 in the benchmark's process: imports,
    the caller's rows), and the event loop, with all its requests in flight, stands still meanwhile:
    one took 169 ms of a 4.8 s call at 256 in flight. Objects made during the call are collected as
    usual, and unfreeze() returns the old ones to the collector afterwards, so nothing is kept alive
    for longer than the call. Left alone when someone else has frozen objects (a pre-fork server)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _shutdown(loop: asyncio.AbstractEventLoop, clients: list) -> None:
    async def close_all():
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    def close_loop():
        loop.run_until_complete(close_all())
        loop.close()

    if loop.is_closed():
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none running here: the usual case
        close_loop()
    else:
        # Collected while another event loop runs on this thread (the garbage collector can run
        # anywhere), where run_until_complete refuses; a loop may run on any one thread at a time.
        t = threading.Thread(target=close_loop, name="openai-engine-close")
        t.start()
        t.join()


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg, http_client: str | None = None):
        """`http_client` overrides `cfg.http_client` (auto when the config has no such field)."""
        self.cfg = cfg
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        if not self.base_url:
            raise PrefdataError("openai backend: set engine.base_url in the YAML or OPENAI_BASE_URL in the environment")
        self._key = os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers accept any key
        if any(c in self._key for c in "\r\n") or not self._key.isascii():
            # Named by its variable, never shown: it is the key.
            raise PrefdataError(f"the API key in ${cfg.api_key_env} has characters an HTTP header cannot carry")
        self.http_client = self._choose_client(http_client or getattr(cfg, "http_client", "auto"))
        if self.http_client == "lean":
            from prefdata.engines import http

            self._http = http
            self._not_found: tuple = (http.NotFoundError,)
            self._retry_on: tuple = (http.APIConnectionError, http.RateLimitError, http.InternalServerError,
                                     ValueError)
        else:
            try:
                import openai
            except ModuleNotFoundError:
                raise PrefdataError("openai backend: the official client needs the openai package "
                                    "(pip install openai); engine.http_client: lean works without it") from None
            self._openai = openai
            # The HTTP library this openai release is built on: httpx2 from 3.x, httpx before.
            self._httpx = sys.modules.get("httpx2") or sys.modules["httpx"]
            self._not_found = (openai.NotFoundError,)
            # APITimeoutError: the lean module's, raised by our own deadline around each attempt.
            self._retry_on = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                              openai.InternalServerError, openai.APIResponseValidationError, ValueError,
                              APITimeoutError)
        self.model_id = cfg.model
        self._max_body = int(getattr(cfg, "max_response_mb", MAX_BODY / 2**20) * 2**20)
        self._shown = _shown(self.base_url)
        # Sent with an assistant prefix until a server refuses them by name (400/422); then never again.
        self._continue_fields = True
        # billed_failures: replies the server generated (and bills, usage included) that were unusable;
        # their tokens are in prompt_tokens/completion_tokens, so cost counts them.
        self.stats = {"requests": 0, "failed": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "billed_failures": 0}
        # One event loop and one set of clients for the engine's life, made on first use: a fresh
        # loop per call paid ~0.1 s (an SSL context per client, new connections) before its first
        # request, and keep-alive connections now carry over from one call to the next.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: list = []
        self._lock = threading.Lock()  # the loop runs one call at a time

    def _choose_client(self, choice: str) -> str:
        """"openai" or "lean" for the configured choice; a bad URL for the lean path fails here, once."""
        if choice not in HTTP_CLIENTS:
            raise PrefdataError(f"engine.http_client: {choice!r} is not one of {', '.join(HTTP_CLIENTS)}")
        if choice == "openai" or (choice == "auto" and self.cfg.concurrency < LEAN_AT):
            return "openai"
        from prefdata.engines.http import Origin, Unsupported, proxy_in_env

        try:
            self._origin = Origin(self.base_url)
        except Unsupported:
            if choice == "auto":
                return "openai"  # a URL only the official client serves
            raise
        proxy = proxy_in_env(self._origin)
        if proxy and choice == "auto":
            return "openai"  # only the official client goes through proxies
        if proxy:
            raise PrefdataError(f"engine.http_client lean does not go through proxies, and {proxy} applies to "
                                f"{self._origin.shown}; use http_client: openai or auto, or add the host to NO_PROXY")
        return "lean"

    def _client(self, connections: int):
        if self.http_client == "lean":
            return self._http.LeanClient(self._origin, self._key, self.cfg.timeout_s, connections,
                                         max_body=self._max_body)
        limits = self._httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        guard = _response_guard(self.base_url, self._max_body, self._httpx)
        return self._openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key, max_retries=0,
                                        timeout=self.cfg.timeout_s,
                                        http_client=self._openai.DefaultAsyncHttpxClient(
                                            limits=limits, event_hooks={"response": [guard]}))

    async def _send(self, client, body: dict) -> bytes:
        """The reply body of a 2xx; anything else raises the client's own error."""
        # (A branch, not a bound method kept on self: that would be a reference cycle, and the
        # engine's finalizer would then run whenever the cyclic GC gets to it.)
        if self.http_client == "lean":
            # Compact UTF-8 JSON, as httpx writes it for the official client.
            # Its own deadline covers connect, send and the whole reply.
            return await client.post("/chat/completions",
                                     json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        # The official client's timeout applies to connect, write and each read, so a server that
        # trickles a byte a second never times out: one deadline for the whole attempt, as the lean
        # client has. Streamed, so the body is read (and capped) here.
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                resp = await client.post("/chat/completions", body=body, cast_to=self._httpx.Response, stream=True)
                try:
                    return await _read_capped(resp, self._max_body, self._shown)
                finally:
                    await resp.aclose()
        except TimeoutError:
            raise APITimeoutError() from None

    def _error_text(self, err) -> str:
        """One line for a failed attempt: a status error shows what the server said (either client,
        any of the usual error shapes), anything else its own message."""
        status = getattr(err, "status_code", None)
        if isinstance(status, int):
            return status_message(status, _status_body(err))
        return str(err)

    def _refuses_continue_fields(self, err, body: dict) -> bool:
        """Whether `err` is a 400/422 naming vLLM's continuation fields that `body` carried. If so they
        are dropped from `body` and from every later request of this engine (a warning says so once)."""
        if getattr(err, "status_code", None) not in (400, 422) or CONTINUE_FIELDS[0] not in body:
            return False
        said = (_status_body(err) or b"").decode("utf-8", "replace")
        if not any(f in said for f in CONTINUE_FIELDS):
            return False
        for f in CONTINUE_FIELDS:
            body.pop(f, None)
        if self._continue_fields:
            self._continue_fields = False
            print(f"warning: {self._shown} refused the vLLM fields {' and '.join(CONTINUE_FIELDS)} "
                  f"({self._error_text(err)[:200]}); assistant prefixes go without them from now on, and this "
                  "server may read a prefix as a finished turn instead of continuing it", file=sys.stderr)
        return True

    def _retry_after(self, err) -> float | None:
        headers = getattr(err, "headers", None)  # the lean client's status errors
        if headers is None:
            resp = getattr(err, "response", None)  # openai's
            headers = resp.headers if resp is not None else None
        value = headers.get("retry-after") if headers is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def _retryable(self, err) -> bool:
        # 429, 5xx, timeouts, dropped connections, and replies that are not a usable completion.
        return isinstance(err, self._retry_on)

    async def _one(self, client, req: ChatRequest, sample: int, params: SamplingParams) -> Completion:
        body = {"model": self.cfg.model, "messages": list(req.messages), "n": 1, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": params.max_tokens, "seed": row_seed(req, params, sample) & 0x7FFFFFFF}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body["logprobs"] = True  # summed into Completion.logprob, as the local engines report it
        if req.assistant_prefix:
            # vLLM's way to continue an assistant turn; other servers may ignore it, and strict ones
            # refuse it (then _refuses_continue_fields drops it for good).
            body["messages"].append({"role": "assistant", "content": req.assistant_prefix})
            if self._continue_fields:
                body.update(continue_final_message=True, add_generation_prompt=False)
        last = "no attempt"
        attempt = 0
        while True:
            try:
                content = await self._send(client, body)
                try:
                    text, finish, prompt_tokens, completion_tokens, logprob = _parse_chat(content)
                except ValueError:
                    billed = _billed_usage(content)
                    if any(billed):
                        self.stats["prompt_tokens"] += billed[0]
                        self.stats["completion_tokens"] += billed[1]
                        self.stats["billed_failures"] += 1
                    raise
                self.stats["prompt_tokens"] += prompt_tokens
                self.stats["completion_tokens"] += completion_tokens
                return Completion(text=text, finish_reason=finish, num_tokens=completion_tokens, logprob=logprob)
            except Exception as err:  # noqa: BLE001 - classified below
                last = f"{type(err).__name__}: {_redact(self._error_text(err), self._key)}"
                if isinstance(err, self._not_found):
                    return self._fail(f"model '{self.cfg.model}' not found on {redact(self.base_url)}: {last}")
                if self._refuses_continue_fields(err, body):
                    continue  # at once, and not counted: the request changed, the server is fine
                if not self._retryable(err) or attempt == self.cfg.max_retries:
                    break
                attempt += 1
                self.stats["retries"] += 1
                wait = self._retry_after(err)
                if wait is None:
                    wait = min(30.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())  # backoff with jitter
                await asyncio.sleep(wait)  # the worker's slot stays taken: backing off lowers the load
        return self._fail(last)

    def _fail(self, msg: str) -> Completion:
        self.stats["failed"] += 1
        return Completion(text="", finish_reason="error", error=msg[:500])

    async def _run(self, items, params, done) -> list[Completion]:
        out: list[Completion | None] = [None] * len(items)
        todo = iter(range(len(items)))  # shared by the workers; each index is taken exactly once
        buf: tuple[list[int], list[Completion]] = ([], [])

        def flush():
            nonlocal buf
            if buf[0]:
                ready, buf = buf, ([], [])
                done(*ready)

        async def worker(client):
            for i in todo:
                req, sample = items[i]
                out[i] = await self._one(client, req, sample, params)
                buf[0].append(i)
                buf[1].append(out[i])
                if len(buf[0]) >= FLUSH_EVERY:
                    flush()

        async def ticker():
            while True:
                await asyncio.sleep(FLUSH_S)
                flush()

        clients = self._clients
        tick = asyncio.create_task(ticker())
        try:
            await asyncio.gather(*(worker(clients[k % len(clients)])
                                   for k in range(min(self.cfg.concurrency, len(items)))))
        finally:
            tick.cancel()
            flush()
        with contextlib.suppress(asyncio.CancelledError):
            await tick  # re-raises an on_batch error that happened on the ticker
        return out

    def _call(self, coro):
        """Run `coro` on the engine's loop; like asyncio.run, but the loop and clients stay open."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            # The official client is split over one client per POOL workers (httpcore rescans its whole
            # pool per request); the lean pool takes a connection in O(1), so one serves them all.
            n_clients = 1 if self.http_client == "lean" else -(-self.cfg.concurrency // POOL)
            self._clients = [self._client(-(-self.cfg.concurrency // n_clients)) for _ in range(n_clients)]
            self._closer = weakref.finalize(self, _shutdown, self._loop, self._clients)
        try:
            return self._loop.run_until_complete(coro)
        finally:
            # An interrupted call must not leave workers behind to run on in the next one.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        """Close the connections and the loop now (otherwise done when the engine is collected)."""
        if self._loop is not None:
            self._closer()  # runs _shutdown once; the finalizer is then dead
            self._loop, self._clients = None, []

    def generate_samples(self, items: list[tuple[ChatRequest, int]], params: SamplingParams, on_batch=None):
        from prefdata.progress import progress_bar

        self.stats["requests"] += len(items)
        if not items:
            return []
        t0 = time.time()
        with progress_bar(f"requests to {redact(self.base_url)}", len(items), unit="requests",
                          disable=not self.cfg.progress) as advance:

            def done(pos, comps):
                advance(len(pos))
                if on_batch is not None:
                    on_batch(pos, comps)

            with self._lock, _old_objects_frozen():
                out = self._call(self._run(items, params, done))
        self.stats["last_call_s"] = round(time.time() - t0, 3)
        return out

    def score(self, requests, completions):
        raise PrefdataError("the openai backend cannot score log-likelihoods; use a transformers or vllm engine "
                            "for log-likelihood judges")
