"""Transformers engine speed, one change at a time: each git revision's engine side by side in one run.

    .venv/bin/python benchmarks/engine_speed.py                      # 64 prompts x 64 tokens, 64 score pairs
    .venv/bin/python benchmarks/engine_speed.py --prompts 256 --new-tokens 128 --rounds 1

Every revision's `prefdata/` is exported with `git archive` and run in its own subprocess (the same
prompts, T 0.7, top-p 0.9, cache off, the embedded SmolLM2-135M in float32), rounds interleaved
(forward, then backward order) so the shared machine's load falls on all of them alike; each
revision's best round is reported (wall clock and, since the machine is shared, the process's CPU
time, which a loaded machine disturbs far less), with the ratio to the previous revision and to the first. The
float32 matmul ceiling over the model's own shapes (engine_throughput.ceiling) is measured in the same
run, before and after, and each engine's share of it counts 2 x matmul parameters x (prompt +
generated tokens) per second. score() runs judge-length prompts with the two options "A" and "B" in
one call (as the pairwise judge sends them) at the first and last revision: pairs/s and peak memory
(the process's peak RSS over its RSS after loading).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each change of issue 14 on its own; the first is the engine before it.
REVISIONS = [("before (ba1fe86)", "ba1fe86"), ("1. last-position logits", "1b1c932"),
             ("2. + top-k prefilter", "c891dec"), ("3. + vectorised counter-based sampling", "212c5c8"),
             ("4-5. + chunked score(), finished rows leave the batch", "297d553")]
# The current engine with one of this session's changes switched off (--variants): each change's share.
VARIANTS = {"no-refill": "6-8 without continuous batching (static batches, transformers' DynamicCache)",
            "no-gqa": "6-8 without grouped-head SDPA (transformers' sdpa, which repeats KV heads)"}


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def judge_requests(n: int):
    """Judge-length pairwise prompts (about 250 tokens each), ending where the judge's verdict starts."""
    from engine_throughput import TOPICS, prompts

    from prefdata.engines.base import ChatRequest

    out = []
    for i, q in enumerate(prompts(n)):
        t = TOPICS[i % len(TOPICS)]
        a = " ".join(f"{t.capitalize()} matter{'s' * (k % 2)} because of reason {k}, which most people miss."
                     for k in range(6 + i % 3))
        b = " ".join(f"Some say {t} are about idea {k}; that is only part of the story." for k in range(7 - i % 3))
        msg = (f"Question: {q.messages[0]['content']}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
               "Which response answers the question better? Reply with the letter only.")
        out.append(ChatRequest(messages=[{"role": "user", "content": msg}], assistant_prefix="Winner: "))
    return out


def worker(a) -> None:
    """Runs inside one revision's exported tree (PYTHONPATH); prints one JSON line."""
    import torch
    from engine_throughput import prompts

    import prefdata
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.engines.transformers import TransformersEngine

    assert str(Path(prefdata.__file__).resolve()).startswith(str(Path(a.tree).resolve())), prefdata.__file__
    if a.threads:
        torch.set_num_threads(a.threads)
    eng = TransformersEngine(EngineConfig(model=a.model, cache=False, progress=False,
                                          max_batch_size=a.batch_size))
    if a.variant == "no-gqa":
        eng.model.set_attn_implementation("sdpa")
    elif a.variant == "no-refill":
        from prefdata.engines import kvcache

        kvcache.supports = lambda config: False  # the decoder then keeps DynamicCache and never refills
    res = {}
    if a.mode == "generate":
        reqs = prompts(a.prompts)
        params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=a.new_tokens, seed=0)
        eng.generate_samples([(reqs[0], 0)], SamplingParams(max_tokens=2))  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        out = eng.generate_samples([(r, 0) for r in reqs], params)
        res["seconds"], res["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        res["tokens"] = sum(c.num_tokens for c in out)
        res["prompt_tokens"] = sum(len(eng._encode(r)) for r in reqs)
        res["finished_by_eos"] = sum(c.finish_reason == "stop" for c in out)
        res["sampler_ms"] = _time_sampler(eng, reqs, params)
    else:
        reqs = judge_requests(a.pairs)
        eng.score(reqs[:1], ["A"])  # warm-up
        base = _rss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        lp = eng.score([r for r in reqs for _ in (0, 1)], [o for _ in reqs for o in ("A", "B")])
        res["seconds"], res["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        res["peak_extra_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        res["prompt_tokens"] = sum(len(eng._encode(r)) for r in reqs)
        res["scores_head"] = lp[:4]
    print("RESULT " + json.dumps(res), flush=True)


def _time_sampler(eng, reqs, params, repeats: int = 10) -> float:
    """Milliseconds per decode step spent choosing the next tokens, on this model's real next-token
    logits for the prompts (one batch), with whatever sampler this revision has."""
    import torch

    ids = [eng._encode(r) for r in reqs[:eng.cfg.max_batch_size]]
    width = max(len(x) for x in ids)
    inp = torch.tensor([[eng.tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.inference_mode():
        logits = eng.model(input_ids=inp, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
                           ).logits[:, -1, :].float()  # (b, vocab)
        if hasattr(eng, "_sample"):  # revisions before the counter-based sampler
            gens = [torch.Generator().manual_seed(k) for k in range(len(ids))]
            step = lambda t: eng._sample(logits, gens, params, [False] * len(ids))
        else:
            from prefdata.engines.sampling import sample, stream_keys, uniforms

            keys = stream_keys(list(range(len(ids))))
            step = lambda t: sample(logits, uniforms(keys, t), params.temperature, params.top_p)
        step(0)
        t0 = time.perf_counter()
        for t in range(repeats):
            step(t)
    return (time.perf_counter() - t0) / repeats * 1e3


def _export(rev: str, dest: Path) -> Path:
    tree = dest / rev
    tree.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "prefdata"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=arch.stdout, check=True)
    return tree


def _run(tree: Path, mode: str, model: str, a, variant: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'benchmarks'}"}
    cmd = [sys.executable, __file__, "--worker", "--tree", str(tree), "--mode", mode, "--model", model,
           "--prompts", str(a.prompts), "--new-tokens", str(a.new_tokens), "--pairs", str(a.pairs),
           "--threads", str(a.threads), "--batch-size", str(a.batch_size), "--variant", variant]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree, check=False)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{tree.name} {mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=64, help="score(): judge prompts, each scored with A and B")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--head", default="HEAD", help="the revision measured last (the current engine)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per engine and for the ceiling; "
                    "0 = torch's default. 1 holds up better on an oversubscribed machine.")
    ap.add_argument("--batch-size", type=int, default=64, help="the engine's max_batch_size (its default: 64); "
                    "with fewer than --prompts, continuous batching has rows to refill")
    ap.add_argument("--revisions", nargs="*", help="git revisions to compare with HEAD (default: every change "
                    "of issue 14 in order)")
    ap.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                    help="also run HEAD with one change switched off")
    ap.add_argument("--variant", default="")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--tree")
    ap.add_argument("--mode")
    ap.add_argument("--model")
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from engine_throughput import ceiling, matmul_params
    from transformers import AutoConfig

    from prefdata.models import DEFAULT_MODEL, resolve_model

    if a.threads:
        torch.set_num_threads(a.threads)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.head], check=True,
                          capture_output=True, text=True).stdout.strip()
    base = REVISIONS if a.revisions is None else [(f"`{r}`", r) for r in a.revisions]
    # A revision may run more than once (variants of HEAD): runs are keyed by label.
    revs = base + [(VARIANTS[v], head) for v in a.variants] + [
        (f"6-8. + continuous batching, in-place KV cache, grouped-head SDPA (now, {head})", head)]
    variant_of = {VARIANTS[v]: v for v in a.variants}
    model = resolve_model(DEFAULT_MODEL)
    mcfg = AutoConfig.from_pretrained(model)
    P = matmul_params(mcfg)
    load0 = os.getloadavg()[0]
    ceil = [ceiling(mcfg, rows=(64, 256))]
    gen: dict[str, list[dict]] = {label: [] for label, _ in revs}
    scores: dict[str, list[dict]] = {revs[0][1]: [], head: []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: _export(rev, Path(tmp)) for rev in dict.fromkeys(rev for _, rev in revs)}
        for r in range(a.rounds):
            order = revs if r % 2 == 0 else list(reversed(revs))
            for label, rev in order:
                gen[label].append(_run(trees[rev], "generate", model, a, variant_of.get(label, "")))
                print(label, "generate", gen[label][-1], flush=True)
            for rev in (scores if r % 2 == 0 else list(reversed(scores))):
                scores[rev].append(_run(trees[rev], "score", model, a))
                print(rev, "score", scores[rev][-1], flush=True)
    ceil.append(ceiling(mcfg, rows=(64, 256)))
    load1 = os.getloadavg()[0]
    top = max(max(c.values()) for c in ceil)

    rows, prev, first, cfirst = [], None, None, None
    for label, rev in revs:
        best = min(gen[label], key=lambda x: x["seconds"])
        tps = best["tokens"] / best["seconds"]
        share = 2 * P * (best["tokens"] + best["prompt_tokens"]) / best["seconds"] / top
        first = first or tps
        vs_prev = f"{tps / prev:.2f}x" if prev else "-"
        cpu = min(gen[label], key=lambda x: x["cpu_seconds"])  # CPU time: what the load disturbs least
        ctps = cpu["tokens"] / cpu["cpu_seconds"]
        cfirst = cfirst or ctps
        rows.append(f"| {label} | `{rev}` | {best['tokens']:,} | {best['seconds']:.1f} | {tps:.0f} | {vs_prev} | "
                    f"**{tps / first:.2f}x** | {share:.1%} | {cpu['cpu_seconds']:.1f} | {ctps:.0f} | "
                    f"**{ctps / cfirst:.2f}x** | {best['sampler_ms']:.1f} |")
        prev = tps
    srows = []
    s_first = s_cpu_first = None
    for rev, runs in scores.items():
        best = min(runs, key=lambda x: x["seconds"])
        pps = a.pairs / best["seconds"]
        s_first = s_first or pps
        cpu = min(r["cpu_seconds"] for r in runs)
        s_cpu_first = s_cpu_first or cpu
        srows.append(f"| `{rev}` | {a.pairs} | {best['seconds']:.1f} | {pps:.2f} | **{pps / s_first:.2f}x** | "
                     f"{cpu:.1f} | **{s_cpu_first / cpu:.2f}x** | "
                     f"{max(r['peak_extra_mib'] for r in runs):.0f} | {best['scores_head'][:2]} |")
    ceil_line = "; ".join(", ".join(f"{m} rows {f / 1e9:.0f} GFLOP/s" for m, f in c.items()) for c in ceil)
    cmd = (f".venv/bin/python benchmarks/engine_speed.py --prompts {a.prompts} --new-tokens {a.new_tokens} "
           f"--pairs {a.pairs} --rounds {a.rounds} --batch-size {a.batch_size}"
           + (f" --threads {a.threads}" if a.threads else "")
           + (f" --revisions {' '.join(a.revisions)}" if a.revisions is not None else "")
           + (f" --variants {' '.join(a.variants)}" if a.variants else ""))
    run = (f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores shared with other "
        f"work (load average {load0:.1f} at the start, {load1:.1f} at the end), SmolLM2-135M float32, "
        f"{a.prompts} prompts x up to {a.new_tokens} new tokens, T 0.7, top-p 0.9, best of {a.rounds} "
        "interleaved rounds, torch threads "
           f"{torch.get_num_threads()}; rows that ended by EOS or a stop: "
           f"{', '.join(str(gen[label][0]['finished_by_eos']) for label, _ in revs)}; engine max_batch_size "
           f"{a.batch_size}.")
    print("\n".join([
        f"Command: `{cmd}`", run, "",
        ("| engine | revision | generated tokens | seconds | tokens/s | vs previous | vs before | share of ceiling "
         "| CPU s | tokens per CPU s | vs before (CPU) | sampler ms/step |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        (f"Matmul ceiling (before; after): {ceil_line}. Share = 2 x {P / 1e6:.0f}M x (prompt + generated "
         "tokens) / s over the best ceiling figure."), "",
        ("| score() revision | pairs (A and B each) | seconds | pairs/s | vs before | CPU s | vs before (CPU) "
         "| peak extra MiB | first scores |"), "|---|---|---|---|---|---|---|---|---|", *srows,
    ]))


if __name__ == "__main__":
    main()
