"""Transformers engine throughput vs naive per-prompt `model.generate`, measured in one run.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 64] [--new-tokens 64]

Both sides sample (T=1, top-p 1) exactly `--new-tokens` tokens per prompt (EOS ignored for the
naive side via min_new_tokens; our engine is given the same budget and counts what it produced),
on the embedded SmolLM2-135M-Instruct, on this machine's CPU threads.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefdata.engines import CachedEngine, EngineConfig  # noqa: E402
from prefdata.engines.base import ChatRequest, SamplingParams  # noqa: E402
from prefdata.engines.transformers import TransformersEngine  # noqa: E402
from prefdata.models import DEFAULT_MODEL  # noqa: E402

TOPICS = ["bread", "rain", "chess", "volcanoes", "tides", "bees", "taxes", "jazz", "glaciers", "bridges",
          "vaccines", "comets", "coffee", "maps", "sleep", "kites"]
FORMS = ["Explain {} to a child.", "Give three facts about {}.", "Write a short poem about {}.",
         "What is a common misconception about {}?"]


def prompts(n: int) -> list[ChatRequest]:
    out = [FORMS[i % len(FORMS)].format(TOPICS[(i // len(FORMS)) % len(TOPICS)]) for i in range(n)]
    return [ChatRequest(messages=[{"role": "user", "content": p}]) for p in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()

    cfg = EngineConfig(model=args.model, cache=False, progress=False)
    backend = TransformersEngine(cfg)
    reqs = prompts(args.prompts)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.new_tokens, seed=0)

    # Ours: length-sorted, token-budget batches, KV-cached decode loop. Without the cache layer so
    # the measurement is pure generation.
    eng = CachedEngine(backend, None)
    t0 = time.perf_counter()
    outs = eng.generate(reqs, params)
    ours_s = time.perf_counter() - t0
    ours_tokens = sum(c.num_tokens for cs in outs for c in cs)

    # Naive: one `model.generate` call per prompt, same model object, same sampling settings.
    tok, model = backend.tokenizer, backend.model
    naive_tokens = 0
    t0 = time.perf_counter()
    for r in reqs:
        ids = torch.tensor([backend._encode(r)])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
                                 max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
        naive_tokens += out.shape[1] - ids.shape[1]
    naive_s = time.perf_counter() - t0

    ours_tps, naive_tps = ours_tokens / ours_s, naive_tokens / naive_s
    lines = [
        f"| transformers engine (batched, KV cache, per-row seeds) | {ours_tokens} | {ours_s:.1f} | {ours_tps:.0f} |",
        f"| naive per-prompt `model.generate` | {naive_tokens} | {naive_s:.1f} | {naive_tps:.0f} |",
    ]
    ratio = ours_tps / naive_tps
    print("\n".join(lines))
    print(f"speed-up (tokens/s): {ratio:.2f}x")

    section = "\n".join([
        "## Generation (transformers engine)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_generate.py --prompts {args.prompts} --new-tokens {args.new_tokens}`",
        f"Run: {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, model {args.model} (embedded float32 checkpoint).",
        "",
        "| engine | tokens | seconds | tokens/s |",
        "|---|---|---|---|",
        *lines,
        "",
        f"**Ratio: {ratio:.2f}x** tokens/s for the engine over naive per-prompt generation, same prompts, same run.",
        "",
    ])
    write_section(Path(args.results), "## Generation (transformers engine)", section)


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace one `## ` section of RESULTS.md (or append it), leaving the others alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nLatest figures; each section names the command that made it.\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip() + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + body + (text[end + 1:] if end >= 0 else "")
    path.write_text(text.rstrip() + "\n")


if __name__ == "__main__":
    main()
