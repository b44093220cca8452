"""Rejection sampling rows per minute on the embedded SmolLM2, side by side with self_reward, cold cache.

    .venv/bin/python benchmarks/bench_rejection.py [--prompts 4] [--results benchmarks/results/rejection.md]

Every run reads the first N built-in quickstart prompts in a fresh store (nothing from the request
cache), with the same candidate budget: 4 candidates per prompt, T 0.7, top-p 0.9, --max-tokens
new tokens (96).
- self_reward (baseline): pipelines/self_reward.yaml, 3 sampled rubric judgements per candidate;
- best_of_n / rso: pipelines/rejection_sampling.yaml, one round, the policy's expected rubric score
  (logprob judge) as reward, no threshold;
- rso_target: the shipped target-count settings (target N pairs, threshold 2.5, up to 3 rounds);
- rso_rerun: the rso run again on its warm cache: what a resume after a kill costs.
A step's time is the `elapsed_s` its lineage records (sampling, scoring, selection and the card,
without model loading). The ratio is rows per minute over the baseline's, in this one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAME = ["temperature=0.7", "top_p=0.9", "max_tokens={t}", "n_candidates=4"]
ONE_ROUND = ["target_rows=null", "threshold=null", "max_rounds=1", "max_tokens_total=null"]
RUNS = {  # label -> (yaml, step, config overrides)
    "self_reward (baseline)": ("self_reward.yaml", "self_reward", SAME),
    "best_of_n": ("rejection_sampling.yaml", "rso", SAME + ONE_ROUND + ["mode=best_of_n", "pairing=best_vs_worst"]),
    "rso": ("rejection_sampling.yaml", "rso", SAME + ONE_ROUND),
    "rso_target": ("rejection_sampling.yaml", "rso", SAME + ["target_rows={n}"]),
}


def run(yaml_name, step, sets, n, t, model, extra=()):
    from prefdata.pipeline import run_pipeline

    over = [f"engine.model={model}", f"steps.{step}.limit={n}"] + [f"steps.{step}.config.{s.format(n=n, t=t)}" for s in sets]
    over += list(extra)
    t0 = time.perf_counter()
    out = run_pipeline(REPO / "pipelines" / yaml_name, over)
    wall = time.perf_counter() - t0
    lin = out[step].manifest["lineage"]
    rows = sum(s["rows"] for s in out[step].manifest["splits"].values())
    return rows, lin["elapsed_s"], wall, lin["report"], over


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96, help="New tokens per candidate, every run.")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "rejection.md"))
    a = ap.parse_args()
    from prefdata.models import DEFAULT_MODEL, resolve_model

    model = resolve_model(DEFAULT_MODEL)  # prepared once, outside the timing
    lines = ["| run | rows | candidates | rounds | stopped by | step s | rows/min | vs baseline |",
             "|---|---|---|---|---|---|---|---|"]
    base = None
    for label, (yaml_name, step, sets) in RUNS.items():
        os.environ["PREFDATA_HOME"] = tempfile.mkdtemp()  # a fresh store and request cache
        rows, dt, wall, rep, _ = run(yaml_name, step, sets, a.prompts, a.max_tokens, model)
        rpm = rows / dt * 60 if dt else float("nan")
        base = rpm if base is None else base
        lines.append(f"| {label} | {rows} | {rep.get('candidates', '-')} | {rep.get('rounds', 1)} | "
                     f"{rep.get('stopped_by', '-')} | {dt:.1f} | {rpm:.2f} | {rpm / base:.2f}x |")
        print(lines[-1], f"(wall {wall:.1f}s)", file=sys.stderr, flush=True)
        write(a.results, a, lines)
        if label == "rso":
            # Same store under another output name, so the step runs again (a committed step would be
            # skipped by its fingerprint): every sample and score comes from the request cache.
            rows, dt, wall, rep, _ = run(yaml_name, step, sets, a.prompts, a.max_tokens, model,
                                         extra=[f"steps.{step}.output=rso-rerun"])
            lines.append(f"| rso_rerun (warm cache) | {rows} | {rep['candidates']} | {rep['rounds']} | "
                         f"{rep['stopped_by']} | {dt:.1f} | {rows / dt * 60:.2f} | {rows / dt * 60 / base:.2f}x |")
            print(lines[-1], file=sys.stderr, flush=True)
            write(a.results, a, lines)
    print("\n".join(lines))


def write(path, a, lines):
    """The results file, rewritten after every run so a long benchmark leaves what it measured."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(
        "# Rejection sampling: rows per minute (embedded SmolLM2-135M, CPU)\n\n"
        f"Command: `.venv/bin/python benchmarks/bench_rejection.py --prompts {a.prompts} --max-tokens "
        f"{a.max_tokens}`\n\n"
        f"{a.prompts} quickstart prompts, 4 candidates each (T 0.7, top-p 0.9, {a.max_tokens} new tokens), cold "
        "request cache per run; step time from the version's lineage (no model loading). Rows are pairs. The "
        "machine is shared (2 cores, several engineers' jobs): absolute figures are noisy, ratios from one run.\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
