"""Pairs per minute for each generator on the embedded SmolLM2, 2 CPU cores, cold cache.

    .venv/bin/python benchmarks/bench_generators.py [--prompts 8]

Each YAML in pipelines/ runs on the first N built-in prompts in a fresh store (no request cache),
with its shipped settings except the prompt limit. Model loading is included (a few seconds).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import write_section  # noqa: E402

RUNS = {
    "rlcd (harmless)": ("rlcd_harmless.yaml", ["steps.rlcd.limit={n}"], "rlcd"),
    "conditional": ("conditional.yaml", ["steps.conditional.limit={n}"], "conditional"),
    "self_reward": ("self_reward.yaml", ["steps.self_reward.limit={n}"], "self_reward"),
    "bpo construct (from RLCD pairs)": ("bpo.yaml", ["steps.pairs.limit={n}", "steps.rewrite.limit=1"], "construct"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    a = ap.parse_args()
    from prefdata.models import DEFAULT_MODEL, resolve_model

    model = resolve_model(DEFAULT_MODEL)  # prepared once, outside the timing
    from prefdata.pipeline import run_pipeline

    lines = []
    for label, (yaml_name, sets, step) in RUNS.items():
        os.environ["PREFDATA_HOME"] = tempfile.mkdtemp()
        t0 = time.perf_counter()
        out = run_pipeline(REPO / "pipelines" / yaml_name, [f"engine.model={model}", *[s.format(n=a.prompts) for s in sets]])
        dt = time.perf_counter() - t0
        v = out[step]
        rows = sum(s["rows"] for s in v.manifest["splits"].values())
        lines.append(f"| {label} | {a.prompts} | {rows} | {dt:.0f} | {rows / dt * 60:.1f} |")
        print(lines[-1], flush=True)
    body = "\n".join([
        "## Generators", "",
        f"Command: `.venv/bin/python benchmarks/bench_generators.py --prompts {a.prompts}`",
        f"Run: {datetime.date.today()}, {os.cpu_count()} cores, embedded SmolLM2-135M-Instruct (float32), cold request "
        "cache, shipped YAML settings. The BPO row's time includes generating its source RLCD pairs and the rewrite/"
        "evaluate steps on one prompt.", "",
        "| generator | prompts | rows out | seconds | rows per minute |", "|---|---|---|---|---|", *lines, "",
    ])
    write_section(Path(a.results), "## Generators", body)


if __name__ == "__main__":
    main()
