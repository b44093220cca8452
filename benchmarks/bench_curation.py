"""Curation at scale, measured in one run.

    .venv/bin/python benchmarks/bench_curation.py [--max-pairs 1000000] [--voters 10]

A. vote + policies on synthetic pairs x voters, 10k -> 1M: wall time and peak RSS growth (psutil),
   so the scaling shows whether anything is worse than linear.
B. K heads on one cached backbone pass vs K separate backbone passes (what K independently trained
   reward models would cost at scoring time), on MiniLM with 64 real-length texts: a ratio.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import write_section  # noqa: E402
from prefdata.curation.policies import PolicyConfig, apply  # noqa: E402
from prefdata.curation.vote import combine  # noqa: E402


class PeakRSS:
    """Samples this process's RSS every 5 ms; peak minus the starting RSS is the step's footprint."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *a):
        self.stop = True
        self.t.join()

    @property
    def mib(self):
        return (self.peak - self.start) / 2**20


def synthetic(n: int, m: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=n)
    voters = {f"v{j}": truth * rng.uniform(0.5, 2) + rng.normal(scale=1.0, size=n) for j in range(m)}
    pairs = pl.DataFrame({
        "id": [f"p{i}" for i in range(n)],
        "chosen": pl.Series([[{"role": "assistant", "content": "a"}]] * n),
        "rejected": pl.Series([[{"role": "assistant", "content": "b"}]] * n),
        "chosen_score": np.ones(n), "rejected_score": np.zeros(n),
        "margin": np.zeros(n), "flipped": np.zeros(n, dtype=bool),
    })
    return pairs, voters


def part_a(max_pairs: int, m: int) -> list[str]:
    cfg = PolicyConfig(flip_bottom_q=0.1, drop_abs_below=0.05, drop_std_above=2.0, margin_from_strength=True)
    rows, base = [], None
    for n in [10_000, 100_000, max_pairs]:
        pairs, voters = synthetic(n, m)
        gc.collect()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            frame = combine(pairs["id"], voters)
            kept, dropped = apply(pairs, frame, cfg)
            dt = time.perf_counter() - t0
        per_m = dt / n * 1e6
        base = base or per_m
        rows.append(f"| {n:,} | {m} | {dt:.2f} | {per_m:.2f} | {per_m / base:.2f} | {mem.mib:.0f} | "
                    f"{kept.height:,} / {dropped.height:,} |")
        print(rows[-1], flush=True)
    return rows


def part_b(k: int = 10) -> str:
    from prefdata.rewards.features import Backbone, FeatureCache
    from prefdata.rewards.heads import train_head

    rng = np.random.default_rng(0)
    words = "the a reply helpful harmless answer question user assistant explains careful kind clear".split()
    texts = [" ".join(rng.choice(words, size=120)) + f" #{i}" for i in range(64)]
    bb = Backbone("minilm", max_length=256)
    xc_train, xr_train = rng.normal(size=(200, 384)).astype(np.float32), rng.normal(size=(200, 384)).astype(np.float32)
    heads = [train_head(xc_train, xr_train, seed=h, l2=10.0) for h in range(k)]
    import tempfile

    # K separate passes: every reward model runs its own backbone over the texts.
    t0 = time.perf_counter()
    for h in heads:
        h(bb.embed(texts, None, progress=False))
    separate = time.perf_counter() - t0
    # One pass, cached features, K heads.
    with tempfile.TemporaryDirectory() as d:
        cache = FeatureCache(Path(d) / "f.sqlite")
        t0 = time.perf_counter()
        feats = bb.embed(texts, cache, progress=False)
        for h in heads:
            h(feats)
        shared = time.perf_counter() - t0
    line = (f"| {k} heads, 64 texts, MiniLM | {separate:.2f} s (K backbone passes) | {shared:.2f} s (one pass + K heads) | "
            f"**{separate / shared:.1f}x** |")
    print(line)
    return line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-pairs", type=int, default=1_000_000)
    ap.add_argument("--voters", type=int, default=10)
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    a = ap.parse_args()
    rows = part_a(a.max_pairs, a.voters)
    b = part_b()
    body = "\n".join([
        "## Curation at scale", "",
        f"Command: `.venv/bin/python benchmarks/bench_curation.py --max-pairs {a.max_pairs} --voters {a.voters}`",
        f"Run: {datetime.date.today()}, {os.cpu_count()} cores. Vote (per-voter standardisation, strength, fitted "
        "label_prob) plus flip/drop/margin policies, all polars/numpy.", "",
        "| pairs | voters | seconds | µs per pair | per-pair cost vs 10k | peak extra RSS (MiB) | kept / dropped |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "One backbone pass for K heads against K backbone passes:", "",
        "| setup | separate | shared | ratio |", "|---|---|---|---|", b, "",
    ])
    write_section(Path(a.results), "## Curation at scale", body)


if __name__ == "__main__":
    main()
