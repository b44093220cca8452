"""A small OpenAI-compatible chat server that injects faults, for testing clients on loopback.

    python -m prefdata.engines.faultserver --port 8011 --fault-rate 0.1 --latency 0.2

Answers are a deterministic function of (messages, seed), so a run through faults and a fault-free
run must produce the same rows. Faults, drawn per request at `fault_rate` from a seeded RNG:
429 with Retry-After, 500, a reply slower than the client's timeout, malformed JSON, a dropped
connection, and (optionally) an empty choices list or a reply that is not HTTP at all. A request
for another model gets a 404. Only ever binds 127.0.0.1.

For testing clients against each other: `chunked` sends every reply with chunked transfer
encoding, `truncate` applies `stop` and `max_tokens` (counted in words) as a real server would
(off by default, so the answers other tests pin stay as they are), a request with `logprobs`
gets one made-up {token, logprob} per word, `record` keeps every request's headers and body, and
`close_idle()` closes the connections waiting for a request, as a server's keep-alive timeout does,
and `tls` (an ssl.SSLContext) serves https.

One asyncio loop on a background thread, HTTP/1.1 with keep-alive, a listen backlog of 4096: the
stdlib ThreadingHTTPServer it replaces had a backlog of 5 (connections refused under a burst of
64+ connects, which clients saw as errors and retried) and a thread per connection. Only what an
OpenAI client sends is parsed: a request line, headers, a Content-Length body.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import threading
import time

FAULTS = ("429", "500", "slow", "malformed", "drop")  # the default mix; "empty" and "garbage" on request
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required", 429: "Too Many Requests",
            500: "Internal Server Error"}


def answer(messages: list[dict], seed) -> str:
    h = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()[:12]
    return f"answer {h} to: {messages[-1]['content'][:40]}"


def _response(code: int, body: bytes, headers: dict | None = None, close: bool = False,
              chunked: bool = False) -> bytes:
    head = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}", "Content-Type: application/json",
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        head.append("Connection: close")
    if chunked:  # in pieces of 7 bytes, one with a chunk extension, then a trailer field
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(body[i:i + 7]), b";ext=1" if i == 7 else b"", body[i:i + 7])
                        for i in range(0, len(body), 7)) + b"0\r\nX-Trailer: 1\r\n\r\n"
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_ACTED_ON = ("content-length", "connection", "transfer-encoding")


def _headers(fields: str, only: tuple[str, ...] | None) -> dict[str, str]:
    """Header fields by lower-case name: all of them, or just `only`. Looking up the three the
    server acts on instead of splitting every field (clients send 7-15) saved about 7% of this
    server's CPU (cProfile, 5120 requests at 256 in flight), CPU that it takes from the client it
    measures on the benchmark machine's shared cores."""
    if only is None:
        out = {}
        for line in fields.split("\r\n"):
            k, sep, v = line.partition(":")
            if sep:
                out[k.strip().lower()] = v.strip()
        return out
    low = fields.lower()
    out = {}
    for name in only:
        key = name + ":"
        at = 0 if low.startswith(key) else low.find("\r\n" + key)  # at a line start only
        if at < 0:
            continue
        start = low.index(":", at) + 1
        end = low.find("\r\n", start)
        out[name] = fields[start:end if end >= 0 else len(fields)].strip()
    return out


def _sample(text: str, req: dict) -> tuple[str, str]:
    """`text` cut at the first stop string, then at max_tokens words; and the finish reason."""
    stops = req.get("stop") or []
    for stop in [stops] if isinstance(stops, str) else stops:
        if stop and stop in text:
            text = text[:text.index(stop)]
    words = text.split(" ")
    if req.get("max_tokens") is not None and len(words) > req["max_tokens"]:
        return " ".join(words[:req["max_tokens"]]), "length"
    return text, "stop"


def _logprobs(text: str) -> dict:
    return {"content": [{"token": w, "logprob": -((len(w) % 7) + 1) / 8, "top_logprobs": []}
                        for w in text.split()]}


class FaultServer:
    def __init__(self, port: int = 0, fault_rate: float = 0.0, latency: float = 0.0, slow_s: float = 2.0,
                 seed: int = 0, faults: tuple[str, ...] = FAULTS, model: str = "test-model", chunked: bool = False,
                 truncate: bool = False, record: bool = False, tls=None):
        self.fault_rate, self.latency, self.slow_s, self.faults, self.model = fault_rate, latency, slow_s, faults, model
        self.chunked, self.truncate, self.record = chunked, truncate, record
        self.tls = tls  # an ssl.SSLContext to serve https with (tests of the clients' TLS)
        self.requests: list[tuple[dict, dict]] = []  # (headers, JSON body) of each POST when `record`
        self._waiting: set = set()  # writers of connections idle between requests
        self.rng = random.Random(seed)  # drawn only on the loop thread, in arrival order
        self.counts: dict[str, int] = {}
        self.connections = 0  # accepted so far: shows whether a client keeps its connections alive
        # Bound here so the port (and any "address in use") is known before the loop starts.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1"
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- one request -------------------------------------------------------------------------
    async def _reply(self, method: str, path: str, headers: dict, body: bytes) -> bytes | None:
        """The bytes to send back, or None to drop the connection without a reply."""
        if method == "GET" and path.rstrip("/").endswith("/models"):
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            return _response(200, json.dumps(models).encode())
        if method != "POST":
            return _response(404, b'{"error": {"message": "not found"}}')
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return _response(400, b'{"error": {"message": "request body is not JSON"}}')
        if self.record:
            self.requests.append((headers, req))
        if req.get("model") != self.model:
            return _response(404, json.dumps({"error": {"message": f"model {req.get('model')} not found"}}).encode())
        fault = self.rng.choice(self.faults) if self.rng.random() < self.fault_rate else None
        self.counts[fault or "ok"] = self.counts.get(fault or "ok", 0) + 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "429":
            return _response(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0.05"})
        if fault == "500":
            return _response(500, b'{"error": {"message": "boom"}}')
        if fault == "slow":
            await asyncio.sleep(self.slow_s)  # then answer normally, long after the client gave up
        if fault == "malformed":
            return _response(200, b'{"choices": [ {"message": ')
        if fault == "drop":
            return None
        if fault == "garbage":
            return b"SSH-2.0-OpenSSH_9.6\r\n\r\n"  # someone else's protocol on this port
        if fault == "empty":
            # Like a hosted API that filtered its reply: nothing usable, the tokens still billed.
            return _response(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                              "model": self.model, "choices": [],
                                              "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                                                        "total_tokens": 13}}).encode())
        text, finish = answer(req["messages"], req.get("seed")), "stop"
        if self.truncate:
            text, finish = _sample(text, req)
        choice = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text},
                  "logprobs": _logprobs(text) if req.get("logprobs") else None}
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": self.model, "choices": [choice],
               "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10}}
        return _response(200, json.dumps(out).encode(), chunked=self.chunked)

    # -- one keep-alive connection -----------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self._waiting.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return  # client closed the connection (or sent garbage)
                finally:
                    self._waiting.discard(writer)
                request_line, _, fields = head.decode("latin-1").partition("\r\n")
                method, path, version = (request_line.split(" ") + ["", "", ""])[:3]
                headers = _headers(fields, None if self.record else _ACTED_ON)
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(_response(411, b'{"error": {"message": "send a Content-Length"}}', close=True))
                    await writer.drain()
                    return
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                reply = await self._reply(method, path, headers, body)
                if reply is None:  # the "drop" fault
                    writer.transport.abort()
                    return
                writer.write(reply)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that timed out and went away mid-reply
        except asyncio.CancelledError:
            # Shutdown with this connection open or a reply sleeping: ending is what the cancel asks,
            # and a handler left cancelled makes asyncio 3.11 print a traceback per connection.
            pass
        finally:
            writer.close()

    def close_idle(self) -> int:
        """Close every connection that is waiting for its next request; how many were closed."""
        async def close():
            writers = list(self._waiting)
            for w in writers:
                w.close()
            return len(writers)

        return asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)

    # -- lifecycle ---------------------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, sock=self.sock, backlog=4096,
                                                                        ssl=self.tls))
        ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.server.close()
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:  # connections still sleeping (latency, "slow")
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def __enter__(self):
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="faultserver")
        self.thread.start()
        ready.wait()
        return self

    def __exit__(self, *a):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with FaultServer(a.port, a.fault_rate, a.latency, seed=a.seed) as s:
        print(f"serving on {s.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
