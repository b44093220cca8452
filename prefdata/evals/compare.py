"""Comparing preference losses on one dataset version, in the spirit of HF's "Preference Tuning LLMs
with Direct Preference Optimization Methods" study (DPO vs IPO vs KTO, same data, same budget).

Two pipeline steps (`pipelines/compare_losses.yaml` wires them):
- `holdout`: the input pairs cut into a train part and a held-out part by prompt: the prompts,
  ordered by a seeded hash, give round(fraction x prompts) held-out ones, so every pair of one prompt
  falls on the same side, reruns cut the same way, and neither side is ever empty.
  `part: train` or `part: heldout` picks the side a step commits.
- `eval_compare`: on held-out pairs, the ranking accuracy (Chen et al. 2024, `prefdata.evals.ranking`)
  of every trained policy named in `models`, against the reference, with bootstrap intervals; the
  training card's loss, steps and final training loss beside them; one table and one PNG plot.
  Implicit-reward accuracy (policy vs reference log-ratio) is DPO's own criterion; reference-free
  losses (SimPO, ORPO) never optimise it, so the likelihood accuracy is shown for all of them too.
  With `win_rate`, each policy's answers to the held-out prompts are also judged against the
  reference's, in both orders (`prefdata.evals.policy`, as the `eval_policy` step).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.evals import policy as P
from prefdata.evals import ranking as R
from prefdata.steps import StepResult, step


class HoldoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.25, gt=0, lt=1, description="Share of prompts held out, in (0, 1); rounded to a "
                            "whole number of prompts, at least 1 and never all.")
    part: Literal["train", "heldout"] = Field(description="Which side this step commits.")
    seed: int = Field(0, description="Seed of the hash that assigns prompts to a side.")


def holdout_mask(table: pa.Table, fraction: float, seed: int) -> np.ndarray:
    """(n,) True where the pair's prompt is held out. The distinct prompts are ordered by
    sha256(seed, prompt) and the first round(fraction * prompts) of them are held out (at least one,
    never all): an exact count, so a small dataset never gets an empty side by chance."""
    texts = [json.dumps(p, sort_keys=True, default=str) for p in table.column("prompt").to_pylist()]
    uniq, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    if len(uniq) < 2:
        from prefdata.errors import PrefdataError

        raise PrefdataError(f"holdout needs pairs from at least 2 prompts to cut by prompt; got {len(uniq)}")
    h = [hashlib.sha256(f"{seed}:{t}".encode()).hexdigest() for t in uniq]
    k = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    held = np.zeros(len(uniq), dtype=bool)
    held[np.argsort(h, kind="stable")[:k]] = True
    return held[inverse]


@step("holdout", config=HoldoutConfig, input="pair", output="pair")
def holdout(cfg: HoldoutConfig, table, ctx) -> StepResult:
    """The train or held-out side of the input pairs, cut by prompt."""
    held = holdout_mask(table, cfg.fraction, cfg.seed)
    keep = held if cfg.part == "heldout" else ~held
    out = table.filter(pa.array(keep))
    md = (f"{cfg.part} side of `{ctx.input_ref}`: {out.num_rows} of {table.num_rows} pairs (prompts ordered by a hash "
          f"with seed {cfg.seed}; {cfg.fraction:.0%} of prompts held out).")
    return StepResult(tables={"train": out}, kind="pair", card_sections=[("Hold-out split", md)],
                      report={"kept": out.num_rows, "of": table.num_rows})


class CompareConfig(R.RankingEvalConfig):
    models: dict[str, str] = Field(description="label -> trained policy (step:<train step>, a path or name@vN), "
                                   "e.g. {dpo: step:dpo, simpo: step:simpo}.")
    reference: str | None = Field(None, description="The reference model; default: the pipeline's engine model "
                                  "(the base every train step started from).")
    win_rate: P.PolicyEvalConfig | None = Field(None, description="Also judge each policy's answers to the held-out "
                                                "prompts against the reference's, in both orders (as eval_policy); "
                                                "None: ranking accuracy only.")
    judge: str | None = Field(None, description="win_rate's judge; default: the pipeline's engine model.")


def train_card(model_dir: str) -> dict:
    """The training facts a comparison needs from a model folder's prefdata-train.json (empty if none)."""
    p = Path(model_dir) / "prefdata-train.json"
    if not p.is_file():
        return {}
    info = json.loads(p.read_text())
    cfg, res = info.get("config", {}), info.get("result", {})
    loss = cfg.get("loss")
    return {"trainer": info.get("kind"), "loss": loss or info.get("kind"), "max_steps": cfg.get("max_steps"),
            "learning_rate": cfg.get("learning_rate"), "beta": cfg.get("beta"), "train_loss": res.get("train_loss"),
            "dataset": info.get("dataset")}


def compare_table(rows: list[dict]) -> str:
    def ci(r, key):
        lo, hi = r[f"{key}_ci95"]
        return f"{r[f'{key}_accuracy']:.3f} ({lo:.2f}-{hi:.2f})"

    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    wins = any("win_rate" in r for r in rows)
    lines = [("| run | trainer / loss | steps | final train loss | implicit-reward acc. (95% CI) | "
              "likelihood acc. (95% CI) | mean implicit margin |" + (" win rate vs reference (LC) |" if wins else "")),
             "|---|---|---|---|---|---|---|" + ("---|" if wins else "")]
    for r in rows:
        win = (f" {num(r.get('win_rate'), '.3f')} ({num(r.get('length_controlled_win_rate'), '.3f')}) |"
               if wins else "")
        lines.append(f"| {r['label']} | {r.get('trainer') or '?'} / {r.get('loss') or '?'} | "
                     f"{num(r.get('max_steps'), 'd')} | {num(r.get('train_loss'), '.4f')} | "
                     f"{ci(r, 'implicit_reward')} | {ci(r, 'policy_likelihood')} | {r['mean_implicit_margin']:.3f} |"
                     + win)
    return "\n".join(lines)


def compare_plot(rows: list[dict], reference_acc: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 3.4))
    for off, key, name in ((-0.2, "implicit_reward", "implicit reward"), (0.2, "policy_likelihood", "likelihood")):
        acc = np.array([r[f"{key}_accuracy"] for r in rows])
        lo = np.array([r[f"{key}_ci95"][0] for r in rows])
        hi = np.array([r[f"{key}_ci95"][1] for r in rows])
        err = np.nan_to_num(np.stack([acc - lo, hi - acc]).clip(min=0))
        ax.bar(x + off, acc, width=0.4, yerr=err, capsize=3, label=name)
    ax.axhline(reference_acc, color="grey", ls="--", lw=1, label="reference likelihood")
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ranking accuracy (held-out)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@step("eval_compare", config=CompareConfig, input="pair", output="eval")
def eval_compare(cfg: CompareConfig, table, ctx) -> StepResult:
    """Ranking accuracy of several trained policies on the same held-out pairs: one table, one plot."""
    from prefdata.schema import conform

    pairs = conform(table, "pair").select(["prompt", "chosen", "rejected"]).to_pylist()
    pairs = pairs[: cfg.limit] if cfg.limit else pairs
    reference = ctx.engine({"model": cfg.reference} if cfg.reference else {})
    rc, rr = R.pair_logps(reference, pairs)  # once: every policy is compared with the same reference
    rows = []
    prompts = [p["prompt"] for p in pairs]
    for label, model in cfg.models.items():
        policy = ctx.engine({"model": model})
        pc, pr = R.pair_logps(policy, pairs)
        row = {"label": label, "model": model, **train_card(model), **R.summarize(pc, pr, rc, rr, cfg)}
        if cfg.win_rate is not None:  # the reference's answers repeat across policies: the request cache serves them
            judge = ctx.engine({"model": cfg.judge} if cfg.judge else {})
            rep = P.run_policy_eval(policy, reference, judge, prompts, cfg.win_rate)
            row.update({k: rep[k] for k in ("win_rate", "length_controlled_win_rate", "wins", "ties", "losses")})
        rows.append(row)
    ref_acc = rows[0]["reference_likelihood_accuracy"] if rows else float("nan")
    md = [(f"{len(pairs)} held-out pairs from `{ctx.input_ref}`; reference `{reference.model_id}`, whose own "
           f"likelihood ranking accuracy is {ref_acc:.3f}. A tie counts as wrong; intervals are percentile "
           f"bootstraps over pairs ({cfg.n_bootstrap} resamples)."), "", compare_table(rows)]
    if ctx.artifact_dir is not None:
        compare_plot(rows, ref_acc, Path(ctx.artifact_dir) / "compare.png")
        md += ["", "![ranking accuracy per loss](compare.png)"]
    metrics = {f"{r['label']}_{k}": r[f"{k}_accuracy"] for r in rows for k in ("implicit_reward", "policy_likelihood")}
    metrics.update({f"{r['label']}_win_rate": r["win_rate"] for r in rows if "win_rate" in r})
    return StepResult(kind="eval", metrics={"pairs": len(pairs), **metrics},
                      card_sections=[("Loss comparison", "\n".join(md))],
                      lineage={"rows": rows, "dataset": ctx.input_ref})
