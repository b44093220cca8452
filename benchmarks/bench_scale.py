"""Soak benchmark: RLCD through the OpenAI engine against the loopback fault server, at growing sizes.

    .venv/bin/python benchmarks/bench_scale.py --sizes 10000 100000 --latency 0.01 --concurrency 128 \
        --out scale.json --out-md scale.md

For each size, in one run and side by side:
- the pipeline (`prefdata run`, request cache on, streaming in shards) in a fresh child process:
  wall time, requests/s, peak RSS (the child's `ru_maxrss`);
- the engine alone on the same requests (cache off) in another child: its requests/s, the baseline;
- the ceiling the server allows: concurrency / latency.
Then, on the largest size: a kill -9 at about half the requests, a resume, and the rows, duplicate
ids and requests re-sent. Targets (issue 17): at most 1 MiB of peak RSS per 1,000 extra prompts;
pipeline throughput at least 0.8x the engine's own; nothing lost or duplicated.

The fault server runs in its own process so its CPU and memory are not the measured child's.
`--out-md` writes the RESULTS.md section (tables, targets met or missed with the figures, load
average) to a file of its own, so a run never edits benchmarks/RESULTS.md behind others' backs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- children


def _prompts(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": [{"role": "user", "content":
                                f"Write two sentences about topic number {i} for a curious reader."}]}) + "\n")


def _spec(url: str, prompts: Path, concurrency: int, shard_rows: int, output: str) -> dict:
    return {"name": "scale", "shard_rows": shard_rows,
            "engine": {"backend": "openai", "model": "test-model", "base_url": url, "progress": False,
                       "concurrency": concurrency, "max_retries": 2, "timeout_s": 30.0},
            "steps": [{"name": "rlcd", "uses": "rlcd", "input": str(prompts), "output": output,
                       "config": {"max_tokens": 32}}]}


def child_pipeline(args) -> None:
    from prefdata.pipeline import run_pipeline

    t0 = time.perf_counter()
    out = run_pipeline(args.yaml)
    wall = time.perf_counter() - t0
    v = out["rlcd"]
    usage = v.manifest["lineage"]["engine_usage"]
    print(json.dumps({"wall_s": wall, "step_s": v.manifest["lineage"]["elapsed_s"], "requests": usage.get("requests", 0),
                      "rows": v.manifest["splits"]["train"]["rows"], "ref": v.ref,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_engine(args) -> None:
    """The engine alone on RLCD's own requests (built by the generator's template code, cache off)."""
    from prefdata import io
    from prefdata.engines import EngineConfig, get_engine
    from prefdata.engines.base import ChatRequest
    from prefdata.generators import rlcd
    from prefdata.prompts import rlcd as tpl

    table = io.read(args.prompts)
    cfg = rlcd.RLCDConfig(max_tokens=32)
    _, sets = tpl.load_principles(cfg.principles_file)
    pos, neg = sets[cfg.principle_set][0]
    reqs = []
    for r in table.select(["id", "prompt"]).to_pylist():
        for d, o in ((pos, neg), (neg, pos)):
            msgs, prefix = tpl.build_messages(r["prompt"], d, o)
            reqs.append(ChatRequest(messages=msgs, assistant_prefix=prefix, request_id=r["id"]))
    eng = get_engine(EngineConfig(backend="openai", model="test-model", base_url=args.url, progress=False,
                                  concurrency=args.concurrency, max_retries=2, timeout_s=30.0, cache=False))
    params = cfg.sampling(0)
    t0 = time.perf_counter()
    outs = eng.generate(reqs, params)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "requests": len(reqs), "failed": sum(o[0].finish_reason == "error" for o in outs),
                      "http_client": getattr(getattr(eng, "backend", eng), "http_client", None),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# ----------------------------------------------------------------------------- driver


def _run_child(kind: str, env: dict, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{kind} child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _cached(home: Path) -> int:
    db = home / "cache" / "requests.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM gen").fetchone()[0]
    except sqlite3.Error:
        return 0


def _server(latency: float, port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "prefdata.engines.faultserver", "--port", str(port), "--fault-rate", "0",
                          "--latency", str(latency)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = p.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"fault server did not start: {line}")
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["pipeline", "engine"])
    ap.add_argument("--yaml")
    ap.add_argument("--prompts")
    ap.add_argument("--url")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--latency", type=float, default=0.01)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--shard-rows", type=int, default=2048)
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--no-kill", action="store_true", help="skip the kill -9 / resume on the largest size")
    ap.add_argument("--no-engine", action="store_true",
                    help="skip the engine-alone baseline (memory at a size whose baseline would not fit the time)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--out-md", default=None, help="write the RESULTS.md section (markdown) here")
    args = ap.parse_args()
    if args.child == "pipeline":
        return child_pipeline(args)
    if args.child == "engine":
        return child_engine(args)

    work = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    server = _server(args.latency, args.port)
    url = f"http://127.0.0.1:{args.port}/v1"
    ceiling = args.concurrency / args.latency if args.latency else float("inf")
    results = {"latency_s": args.latency, "concurrency": args.concurrency, "shard_rows": args.shard_rows,
               "ceiling_rps": ceiling, "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "sizes": [],
               "command": " ".join(["benchmarks/bench_scale.py", *sys.argv[1:]]),
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        for n in args.sizes:
            prompts = work / f"prompts-{n}.jsonl"
            _prompts(prompts, n)
            home = work / f"home-{n}"
            env = {**os.environ, "PREFDATA_HOME": str(home), "OMP_NUM_THREADS": "1", "PREFDATA_PROGRESS_EVERY": "1e9"}
            yaml_path = work / f"p-{n}.yaml"
            import yaml

            yaml_path.write_text(yaml.safe_dump(_spec(url, prompts, args.concurrency, args.shard_rows, "scale")))
            load_before = os.getloadavg()[0]
            eng = None if args.no_engine else _run_child("engine", env, prompts=prompts, url=url,
                                                         concurrency=args.concurrency)
            load_mid = os.getloadavg()[0]
            pipe = _run_child("pipeline", env, yaml=yaml_path)
            row = {"prompts": n, "pipeline": pipe, "engine": eng,
                   "loadavg_1m": [load_before, load_mid, os.getloadavg()[0]],
                   "pipeline_rps": pipe["requests"] / pipe["step_s"],
                   "engine_rps": eng["requests"] / eng["wall_s"] if eng else None}
            row["ratio"] = row["pipeline_rps"] / row["engine_rps"] if eng else None
            results["sizes"].append(row)
            versus = (f"engine alone {row['engine_rps']:.0f} req/s (ratio {row['ratio']:.2f}, ceiling {ceiling:.0f}); "
                      f"peak RSS pipeline {pipe['peak_rss_mib']:.0f} MiB, engine {eng['peak_rss_mib']:.0f} MiB"
                      if eng else f"engine alone not run; peak RSS pipeline {pipe['peak_rss_mib']:.0f} MiB")
            print(f"{n:>9,} prompts: pipeline {pipe['step_s']:.1f}s step ({pipe['wall_s']:.1f}s with start-up), "
                  f"{row['pipeline_rps']:.0f} req/s; {versus}; rows {pipe['rows']:,}; load average "
                  f"{row['loadavg_1m'][0]:.1f} -> {row['loadavg_1m'][1]:.1f} -> {row['loadavg_1m'][2]:.1f} "
                  f"on {os.cpu_count()} CPUs", flush=True)
        if len(results["sizes"]) > 1:
            a, b = results["sizes"][0], results["sizes"][-1]
            slope = (b["pipeline"]["peak_rss_mib"] - a["pipeline"]["peak_rss_mib"]) / ((b["prompts"] - a["prompts"]) / 1000)
            results["rss_mib_per_1000_prompts"] = slope
            print(f"peak RSS growth: {slope:.3f} MiB per 1,000 extra prompts (target <= 1)")
        if not args.no_kill:
            n = args.sizes[-1]
            results["kill"] = _kill_and_resume(work, url, n, args, env_base=os.environ)
            k = results["kill"]
            print(f"kill -9 at {k['cached_at_kill']:,}/{k['total_requests']:,} cached requests; resume: rows {k['rows']:,}, "
                  f"duplicate ids {k['duplicate_ids']}, requests re-sent {k['resent']:,} (cache lacked "
                  f"{k['total_requests'] - k['cached_at_kill']:,}), resume {k['resume_s']:.1f}s", flush=True)
    finally:
        results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
        if args.out_md:
            Path(args.out_md).write_text(markdown(results))
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _kill_and_resume(work: Path, url: str, n: int, args, env_base) -> dict:
    import polars as pl
    import yaml

    prompts = work / f"prompts-{n}.jsonl"
    home = work / f"home-kill-{n}"
    env = {**env_base, "PREFDATA_HOME": str(home), "OMP_NUM_THREADS": "1", "PREFDATA_PROGRESS_EVERY": "1e9"}
    yaml_path = work / f"p-kill-{n}.yaml"
    yaml_path.write_text(yaml.safe_dump(_spec(url, prompts, args.concurrency, args.shard_rows, "scale-kill")))
    total = 2 * n  # two continuations a prompt
    proc = subprocess.Popen([sys.executable, __file__, "--child", "pipeline", f"--yaml={yaml_path}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while _cached(home) < total // 2:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before half its requests: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cached = _cached(home)
    t0 = time.perf_counter()
    resumed = _run_child("pipeline", env, yaml=yaml_path)
    resume_s = time.perf_counter() - t0
    os.environ["PREFDATA_HOME"] = str(home)
    from prefdata import store

    ids = pl.from_arrow(store.load_table(resumed["ref"]).select(["meta"]))["meta"].str.json_path_match("$.prompt_id")
    dup = len(ids) - ids.n_unique()
    return {"total_requests": total, "cached_at_kill": cached, "resent": resumed["requests"], "rows": resumed["rows"],
            "duplicate_ids": dup, "resume_s": resume_s, "resume_peak_rss_mib": resumed["peak_rss_mib"],
            "loadavg_1m": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- report


def markdown(r: dict) -> str:
    """The RESULTS.md section: what ran, the figures side by side, and each target met or missed by its
    measured figure (a target with no figure, e.g. a size not run, says so)."""
    sizes, lat = r["sizes"], r["latency_s"]
    out = ["## Scale: streaming steps, soak benchmark (issue 17)", "",
           "Command (one run, all figures side by side):", "", f"    .venv/bin/python {r['command']}", "",
           (f"RLCD (2 requests per prompt, `max_tokens` 32) through the OpenAI engine against the loopback fault "
           f"server (separate process, 0 faults, {lat * 1000:.0f} ms latency), concurrency {r['concurrency']}, "
           f"HTTP client `{next((x['engine'].get('http_client') for x in sizes if x['engine']), '?')}` "
           "(`http_client: auto`), "
           f"`shard_rows` {r['shard_rows']}. Per size: the engine alone on the same requests (cache off, one "
           "`generate` call) in a fresh child, then `prefdata run` (cache on) in another fresh child. Peak RSS "
           "is each child's `ru_maxrss`. Throughput is requests over the step's own time (`elapsed_s`, "
           "after the input is read) for the pipeline and over the `generate` call for the engine."), "",
           (f"Run {r['started']} to {r.get('finished', '?')} on {r['cpus']} CPUs shared with other engineers' work; "
           "the 1-minute load average before the engine child, between the children and after the pipeline "
           "child is in the table."), "",
           ("| prompts | requests | engine alone | pipeline (step time) | pipeline / engine | ceiling | "
           "peak RSS pipeline | peak RSS engine alone | rows | load average |"),
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in sizes:
        p, e = x["pipeline"], x["engine"] or {}
        eng_rps, ratio, eng_rss = ((f"{x['engine_rps']:.0f} req/s", f"{x['ratio']:.2f}", f"{e['peak_rss_mib']:.0f} MiB")
                                   if e else ("not run", "-", "-"))
        out.append(f"| {x['prompts']:,} | {p['requests']:,} | {eng_rps} | {x['pipeline_rps']:.0f} req/s "
                   f"({p['step_s']:.1f} s) | {ratio} | {r['ceiling_rps']:,.0f} req/s | "
                   f"{p['peak_rss_mib']:.0f} MiB | {eng_rss} | {p['rows']:,} | "
                   + " / ".join(f"{v:.1f}" for v in x["loadavg_1m"]) + " |")
    slope = r.get("rss_mib_per_1000_prompts")
    if slope is not None:
        a, b = sizes[0], sizes[-1]
        out += ["", (f"Peak RSS growth of the pipeline: **{slope:.3f} MiB per 1,000 extra prompts** "
                    f"({a['pipeline']['peak_rss_mib']:.0f} -> {b['pipeline']['peak_rss_mib']:.0f} MiB from "
                    f"{a['prompts']:,} to {b['prompts']:,} prompts).")]
    k = r.get("kill")
    if k:
        out += ["", (f"Kill -9 at about 50% of the largest size ({sizes[-1]['prompts']:,} prompts), then the resume "
                    f"(load average {k.get('loadavg_1m', float('nan')):.1f} after it):"), "",
                ("| requests | in the cache at the kill | rows after resume | duplicate prompt ids | "
                "requests re-sent on resume | what the cache lacked | resume time | resume peak RSS |"),
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                (f"| {k['total_requests']:,} | {k['cached_at_kill']:,} | {k['rows']:,} | {k['duplicate_ids']} | "
                f"{k['resent']:,} | {k['total_requests'] - k['cached_at_kill']:,} | {k['resume_s']:.0f} s | "
                f"{k['resume_peak_rss_mib']:.0f} MiB |")]
    out += ["", "### Targets", ""]
    if slope is None:
        out.append("- Peak RSS <= 1 MiB per 1,000 extra prompts: not measured (one size only).")
    else:
        out.append(f"- Peak RSS <= 1 MiB per 1,000 extra prompts: **{'met' if slope <= 1 else 'missed'}** ({slope:.3f}).")
    timed = [x for x in sizes if x["ratio"] is not None]
    ratios = ", ".join(f"{x['ratio']:.2f} at {x['prompts']:,}" for x in timed) or "no engine baseline run"
    met = timed and all(x["ratio"] >= 0.8 for x in timed)
    out.append(f"- Pipeline >= 0.8x the engine alone: **{'met' if met else 'missed'}** ({ratios})." if timed
               else "- Pipeline >= 0.8x the engine alone: not measured in this run (`--no-engine`).")
    if k:
        ok = k["rows"] == sizes[-1]["prompts"] and k["duplicate_ids"] == 0
        out.append(f"- Nothing lost or duplicated after kill -9 and resume: **{'met' if ok else 'missed'}** "
                   f"({k['rows']:,} rows of {sizes[-1]['prompts']:,}, {k['duplicate_ids']} duplicates, "
                   f"{k['resent']:,} requests re-sent where the cache lacked "
                   f"{k['total_requests'] - k['cached_at_kill']:,}).")
    else:
        out.append("- Nothing lost or duplicated after kill -9 and resume: not run (`--no-kill`).")
    if max((x["prompts"] for x in sizes), default=0) < 1_000_000:
        out.append(f"- 1M prompts: not run; the largest size here is {max(x['prompts'] for x in sizes):,}.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
