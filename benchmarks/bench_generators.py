"""Pairs (rows) per minute for each generator on the embedded SmolLM2, cold request cache.

    .venv/bin/python benchmarks/bench_generators.py [--prompts 8] [--only self_reward]

Each shipped YAML in pipelines/ runs on the first N built-in prompts in a fresh store (so nothing
comes from the request cache), with its shipped settings except the prompt limit. A step's time is
the `elapsed_s` its lineage records: generation, judging, parsing and the card, without model
loading. The BPO rows time each BPO step on its own (the RLCD pairs it reads are not counted).
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

# label -> (yaml, overrides with {n}, steps to report)
RUNS = {
    "rlcd": ("rlcd_harmless.yaml", ["steps.rlcd.limit={n}"], ["rlcd"]),
    "rlcd_rescore": ("rlcd_harmless.yaml", ["steps.rlcd.limit={n}", "steps.rlcd.config.rescore=true",
                                            "steps.rlcd.config.rescore_method=logprob"], ["rlcd"]),
    "conditional": ("conditional.yaml", ["steps.conditional.limit={n}"], ["conditional"]),
    "self_reward": ("self_reward.yaml", ["steps.self_reward.limit={n}"], ["self_reward"]),
    "bpo": ("bpo.yaml", ["steps.pairs.limit={n}", "steps.rewrite.limit={n}"], ["construct", "rewrite", "evaluate"]),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    a = ap.parse_args()
    from prefdata.models import DEFAULT_MODEL, resolve_model

    model = resolve_model(DEFAULT_MODEL)  # prepared once, outside the timing
    from prefdata.pipeline import run_pipeline

    lines = []
    for label in a.only:
        yaml_name, sets, steps = RUNS[label]
        os.environ["PREFDATA_HOME"] = tempfile.mkdtemp()  # a fresh store and request cache
        t0 = time.perf_counter()
        out = run_pipeline(REPO / "pipelines" / yaml_name, [f"engine.model={model}", *[s.format(n=a.prompts) for s in sets]])
        wall = time.perf_counter() - t0
        for step in steps:
            lin = out[step].manifest["lineage"]
            rows = sum(s["rows"] for s in out[step].manifest["splits"].values())
            inputs = lin["report"].get("input_examples", lin["report"].get("n", rows))
            dt = lin["elapsed_s"]
            lines.append(f"| {label}{'' if step == steps[0] and len(steps) == 1 else ' / ' + step} | {inputs} | {rows} "
                         f"| {dt:.0f} | {rows / dt * 60:.1f} | {wall:.0f} |")
            print(lines[-1], flush=True)
    body = "\n".join([
        "## Generators", "",
        f"Command: `.venv/bin/python benchmarks/bench_generators.py --prompts {a.prompts}`",
        f"Run: {datetime.date.today()}, {os.cpu_count()} cores shared with other jobs, embedded SmolLM2-135M-Instruct "
        "(float32, transformers engine), cold request cache, shipped YAML settings. `step s` is the step's own time "
        "(lineage `elapsed_s`, no model load); `wall s` is the whole pipeline file including model load and, for BPO, "
        "the RLCD source pairs. Rows are pairs, except BPO (prompt rows) and BPO evaluate (judged prompts).", "",
        "| generator | inputs | rows out | step s | rows per minute | wall s |", "|---|---|---|---|---|---|", *lines, "",
    ])
    if set(a.only) == set(RUNS):
        write_section(Path(a.results), "## Generators", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
