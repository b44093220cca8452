"""What a dataset step's card and run summary say beyond the step's own sections: its shards, its
engine usage, and the reports and counters they show, summed over every shard.

pipeline.py runs the step and commits it; this module only turns numbers into markdown and adds them up.
"""

from __future__ import annotations


def merge_reports(a: dict, b: dict) -> dict:
    """Two shards' reports as one: counts add up, nested counts merge; any other value that differs
    between shards (a rate, a mean) has no whole-step value here and is left out."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, int) and not isinstance(v, bool) and isinstance(out[k], int):
            out[k] += v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = merge_reports(out[k], v)
        elif out[k] != v:
            del out[k]
    return out


def close_figures(figures: dict) -> None:
    """A later shard's figures: drawn by the step, never shown (the card keeps the first shard's)."""
    if figures:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)


def streaming_markdown(n_shards: int, shard_rows: int, input_rows: int, report: dict) -> str:
    """The card's note on a step streamed in shards, with its counts summed over every shard."""
    flat = []

    def walk(d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, int) and not isinstance(v, bool):
                flat.append((f"{prefix}{k}", v))

    walk(report)
    lines = [(f"{input_rows:,} input rows ran in {n_shards} shards of up to {shard_rows:,} rows (`shard_rows`). "
              "Sections marked *first shard* were written by the step from its first shard alone; the row counts, "
              "lengths, duplicates and score plots of this card, and the counts below, cover every shard.")]
    if flat:
        lines += ["", "| count (all shards) | value |", "|---|---|", *[f"| {k} | {v:,} |" for k, v in flat]]
    return "\n".join(lines)


def engine_usage(engines: dict, before: dict) -> dict[str, int]:
    """What this step cost the engines: requests, failures, retries, tokens (deltas of their stats)."""
    total: dict[str, int] = {}
    for key, eng in engines.items():
        for name, val in (eng.stats or {}).items():
            if isinstance(val, int) and not isinstance(val, bool):
                total[name] = total.get(name, 0) + val - before.get(key, {}).get(name, 0)
    return {k: v for k, v in sorted(total.items()) if v}


def usage_markdown(usage: dict[str, int]) -> str:
    labels = {"requests": "samples requested from the engine (cache hits excluded)",
              "failed": "requests that failed after all retries (kept out of the data)",
              "retries": "retried attempts (429, 5xx, timeouts, dropped connections, malformed replies)",
              "prompt_tokens": "prompt tokens billed by the server", "completion_tokens": "completion tokens "
              "billed by the server", "generated_tokens": "tokens generated locally",
              "worker_restarts": "Ray workers replaced after dying",
              "billed_failures": "unusable replies the server still billed (their tokens are counted above)"}
    rows = [f"| {k} | {v:,} | {labels.get(k, '')} |" for k, v in usage.items()]
    return "\n".join(["| counter | value | meaning |", "|---|---|---|", *rows])
