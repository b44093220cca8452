"""Reward-model scoring: pairs/s with transformers against vLLM's pooling runner in process, side by side
in one run, through the scorer the `reward_model` voter and rejection sampling use
(`prefdata.rewards.reward_model.conversation_rewards`, engine.backend transformers | vllm).

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/bench_reward_scoring.py [--pairs 128] [--eager]
    python3 benchmarks/bench_reward_scoring.py --arch llama-1.1b --dtype bfloat16 --pairs 2048   # a GPU

A pair is two texts (prompt + chosen, prompt + rejected), scored as the voter scores them: both
groups in one call. Each backend first scores 4 pairs untimed (vLLM loads, compiles and keeps its
instance for the process; transformers reloads its model in every call, and that reload is inside
its timed call, as it is in a pipeline), then the timed call scores all pairs. Transformers runs
first, then vLLM, never both at once. The two backends' rewards are compared as well (max |diff|).

Models (no downloads):
- smollm2-135m (default): the embedded SmolLM2-135M-Instruct with a fresh random 1-output score head,
  its own tokenizer and chat template;
- llama-1.1b: random weights in TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV
  heads, vocab 32000) with the repo's tiny test tokenizer (a small BPE: more tokens per word, which
  only changes how long the texts are); for a GPU (benchmarks/gpu_reward_scoring.sh);
- tiny: the test suite's tiny Llama at hidden 128 (a smoke run);
- or --model PATH, any 1-output sequence-classification checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = ("the bread needs flour water salt and yeast then time to rise before it goes into a hot oven "
         "because steam makes the crust crisp while the inside stays soft and a longer proof gives more "
         "flavour so many bakers leave the dough overnight in a cool place and shape it in the morning")
WORDS = TEXT.split()


def build_model(arch: str, dtype: str, out: Path) -> str:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from prefdata.testing import build_tiny_llama

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    if arch == "smollm2-135m":
        from prefdata.models import DEFAULT_MODEL, resolve_model

        base = resolve_model(DEFAULT_MODEL)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(base)
    elif arch == "tiny":
        base = build_tiny_llama(out / "base", hidden=128)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(base)
    elif arch == "llama-1.1b":
        tok = AutoTokenizer.from_pretrained(build_tiny_llama(out / "tok"))
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                          num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                          num_labels=1, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForSequenceClassification(cfg)
    else:
        raise SystemExit(f"unknown --arch {arch}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.to(dt).save_pretrained(out / "rm")
    tok.save_pretrained(out / "rm")
    del model
    return str(out / "rm")


def make_pairs(n: int, seed: int = 0, min_words: int = 10, max_words: int = 120):
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    prompts = [[{"role": "user", "content": text(8, 40) + "?"}] for _ in range(n)]
    chosen = [p + [{"role": "assistant", "content": text(min_words, max_words)}] for p in prompts]
    rejected = [p + [{"role": "assistant", "content": text(min_words, max_words)}] for p in prompts]
    return chosen, rejected


def measure(spec, chosen, rejected, warmup_pairs=None) -> dict:
    from prefdata.rewards.reward_model import conversation_rewards

    warmup = 0.0
    if warmup_pairs is not None:
        t0 = time.perf_counter()
        conversation_rewards(spec, list(warmup_pairs), progress=False)
        warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc, rr = conversation_rewards(spec, [chosen, rejected], progress=False)
    return {"seconds": time.perf_counter() - t0, "warmup_s": warmup, "rewards": (rc, rr)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--arch", default="smollm2-135m", choices=["smollm2-135m", "llama-1.1b", "tiny"])
    ap.add_argument("--model", help="score with this 1-output sequence-classification checkpoint instead")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="the checkpoint's stored dtype; both backends load it as stored")
    ap.add_argument("--batch-size", type=int, default=16, help="transformers: texts per forward pass")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-words", type=int, default=120, help="longest answer, in words")
    ap.add_argument("--eager", action="store_true", help="vLLM: enforce_eager (no torch.compile)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--backends", default="transformers,vllm")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per backend, the backends taking turns "
                    "(a shared machine's load then drifts over both alike); the best of them is reported")
    args = ap.parse_args()

    import numpy as np
    import torch

    from prefdata.rewards.reward_model import RewardModelVoter

    backends = args.backends.split(",")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(args.arch, args.dtype, Path(tmp))
        # Fresh texts for every repeat (the same for both backends): vLLM's prefix cache would otherwise
        # serve a repeat from the last one. Within a repeat, a pair's two texts share their prompt, as in
        # real data, and vLLM's prefix cache may reuse it; transformers computes it twice.
        data = [make_pairs(args.pairs, seed=rep + 1, max_words=args.max_words) for rep in range(args.repeats)]
        warmup_pairs = make_pairs(4, seed=0, max_words=args.max_words)
        from prefdata.rewards.reward_model import load_tokenizer, token_ids

        probe = RewardModelVoter(model=model, max_length=args.max_length)
        tok = load_tokenizer(model)
        lengths = [[len(x) for x in token_ids(tok, probe, c + r)] for c, r in data]
        specs = {}
        for backend in backends:
            engine = {"backend": backend}
            if backend == "vllm":
                engine.update(enforce_eager=args.eager, gpu_memory_utilization=args.gpu_memory_utilization)
            specs[backend] = RewardModelVoter(model=model, max_length=args.max_length, batch_size=args.batch_size,
                                              engine=engine)
        runs: dict[str, list[dict]] = {b: [] for b in backends}
        for rep in range(args.repeats):
            for backend in backends:
                runs[backend].append({**measure(specs[backend], *data[rep], warmup_pairs if rep == 0 else None),
                                      "tokens": sum(lengths[rep])})
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # vLLM's engine process needs the memory transformers' allocator kept
                print(f"{backend} #{rep + 1}: {args.pairs / runs[backend][-1]['seconds']:.2f} pairs/s", flush=True)
        results = {b: {**min(r, key=lambda x: x["seconds"]), "warmup_s": r[0]["warmup_s"],
                       "all": [x["seconds"] for x in r]} for b, r in runs.items()}
        for r in results.values():
            r["pairs_per_s"] = args.pairs / r["seconds"]
        if "vllm" in backends:
            from prefdata.rewards import rm_backends

            rm_backends.close()

    name = args.model or f"{args.arch} ({args.dtype}, random weights)"
    print(f"\nRun: {started}, {device}, load average {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the "
          f"end; torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; {platform.python_version()}")
    print(f"Model: {name}; {args.pairs} pairs = {2 * args.pairs} texts per timed call, fresh each repeat, "
          f"{np.mean([sum(x) for x in lengths]):,.0f} tokens a call (mean {np.mean(lengths):.0f} a text, max "
          f"{max(map(max, lengths))}), max_length {args.max_length}, "
          f"transformers batch_size {args.batch_size}\n")
    print("| backend | pairs | seconds (best) | pairs/s | texts/s | tokens/s | all timed calls, s | warm-up call s |")
    print("|---|---|---|---|---|---|---|---|")
    for b, r in results.items():
        label = {"transformers": "transformers", "vllm": "vLLM in-process (pooling runner"
                 + (", eager)" if args.eager else ", torch.compile)")}[b]
        print(f"| {label} | {args.pairs} | {r['seconds']:.1f} | {r['pairs_per_s']:.2f} | "
              f"{2 * args.pairs / r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} | "
              f"{', '.join(f'{x:.1f}' for x in r['all'])} | {r['warmup_s']:.1f} |")
    if {"transformers", "vllm"} <= set(results):
        t, v = results["transformers"], results["vllm"]
        ratio = v["pairs_per_s"] / t["pairs_per_s"]
        diff = max(float(np.abs(a - b).max()) for i in range(args.repeats)
                   for a, b in zip(runs["transformers"][i]["rewards"], runs["vllm"][i]["rewards"]))
        scale = max(float(np.abs(a).max()) for a in t["rewards"])
        print(f"\nvLLM / transformers: {ratio:.2f}x pairs/s ({'faster' if ratio > 1 else 'SLOWER'}); "
              f"rewards agree to max |diff| {diff:.2e} (largest |reward| {scale:.3f})")


if __name__ == "__main__":  # vLLM's engine process is spawned: this module is imported again there
    main()
