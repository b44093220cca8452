"""A small OpenAI-compatible chat server that injects faults, for testing clients on loopback.

    python -m prefdata.engines.faultserver --port 8011 --fault-rate 0.1 --latency 0.2

Answers are a deterministic function of (messages, seed), so a run through faults and a fault-free
run must produce the same rows. Faults, drawn per request at `fault_rate` from a seeded RNG:
429 with Retry-After, 500, a reply slower than the client's timeout, malformed JSON, a dropped
connection, and (optionally) an empty choices list. Only ever binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "slow", "malformed", "drop")


def answer(messages: list[dict], seed) -> str:
    h = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()[:12]
    return f"answer {h} to: {messages[-1]['content'][:40]}"


class FaultServer:
    def __init__(self, port: int = 0, fault_rate: float = 0.0, latency: float = 0.0, slow_s: float = 2.0,
                 seed: int = 0, faults: tuple[str, ...] = FAULTS, model: str = "test-model"):
        self.fault_rate, self.latency, self.slow_s, self.faults, self.model = fault_rate, latency, slow_s, faults, model
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, body: bytes, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if req.get("model") != server.model:
                    return self._send(404, json.dumps({"error": {"message": f"model {req.get('model')} not found"}}).encode())
                with server.lock:
                    fault = server.rng.choice(server.faults) if server.rng.random() < server.fault_rate else None
                    server.counts[fault or "ok"] = server.counts.get(fault or "ok", 0) + 1
                if server.latency:
                    time.sleep(server.latency)
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0.05"})
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault == "malformed":
                    return self._send(200, b'{"choices": [ {"message": ')
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "empty":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                       "model": server.model, "choices": []}).encode())
                text = answer(req["messages"], req.get("seed"))
                body = {"id": "x", "object": "chat.completion", "created": 0, "model": server.model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10}}
                self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


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
