"""Where the transformers engine's generation time goes: a torch.profiler table of one run.

    .venv/bin/python benchmarks/engine_profile.py --prompts 64 --new-tokens 64

The embedded SmolLM2-135M in float32, T 0.7 / top-p 0.9, cache off, the engine's defaults. The table
groups operators by what they are for (matmuls, attention, KV-cache copies, sampling, the rest), so it
says what bounds the engine now; the raw top operators follow. Prints markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Operator name -> the part of a decode step it belongs to (first match wins).
GROUPS = [("matmul (projections, MLP, LM head)", ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul",
                                                  "aten::linear")),
          ("attention (SDPA)", ("scaled_dot_product", "_flash_attention", "aten::_softmax")),
          ("KV cache and mask copies", ("aten::cat", "aten::copy_", "aten::index", "aten::slice", "aten::zeros",
                                        "aten::new_zeros", "aten::fill_", "aten::expand", "aten::clone")),
          ("sampling (topk, softmax, cumsum, search)", ("aten::topk", "aten::logsumexp", "aten::exp", "aten::cumsum",
                                                        "aten::searchsorted", "aten::sort", "aten::isin",
                                                        "aten::gather")),
          ("elementwise (norms, rotary, activations)", ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt",
                                                        "aten::pow", "aten::mean", "aten::neg", "aten::div",
                                                        "aten::sub", "aten::sin", "aten::cos"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()

    from engine_throughput import prompts
    from torch.profiler import ProfilerActivity, profile

    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.engines.transformers import TransformersEngine
    from prefdata.models import DEFAULT_MODEL

    eng = TransformersEngine(EngineConfig(model=DEFAULT_MODEL, cache=False, progress=False))
    items = [(r, 0) for r in prompts(a.prompts)]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=a.new_tokens, seed=0)
    eng.generate_samples(items[:2], SamplingParams(max_tokens=2))  # warm-up
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = eng.generate_samples(items, params)
    wall = time.perf_counter() - t0
    toks = sum(c.num_tokens for c in out)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups = {name: 0.0 for name, _ in GROUPS} | {"other": 0.0}
    for e in events:
        group = next((name for name, keys in GROUPS if any(k in e.key for k in keys)), "other")
        groups[group] += e.self_cpu_time_total
    lines = [f"Command: `.venv/bin/python benchmarks/engine_profile.py --prompts {a.prompts} --new-tokens "
             f"{a.new_tokens}`",
             f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load average "
             f"{load0:.1f} at the start; {toks:,} tokens in {wall:.1f} s under the profiler "
             f"({toks / wall:.0f} tokens/s; the profiler itself slows the run).", "",
             "| part of the step | self CPU s | share |", "|---|---|---|"]
    for name, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {us / 1e6:.1f} | {us / total:.0%} |")
    lines += ["", "| top operators by self CPU | calls | self CPU s | share |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        lines.append(f"| `{e.key}` | {e.count:,} | {e.self_cpu_time_total / 1e6:.1f} | "
                     f"{e.self_cpu_time_total / total:.0%} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
