"""`prefdata eval ranking`: does a DPO-trained policy rank held-out pairs the way the labels do?

Chen et al. 2024 ("Preference Learning Algorithms Do Not Learn Preference Rankings", arXiv
2405.19534) separate two numbers that are easy to conflate:
- implicit-reward ranking accuracy: the share of pairs where
  log pi(y_c|x) - log pi_ref(y_c|x) > log pi(y_r|x) - log pi_ref(y_r|x), what DPO optimises;
- likelihood ranking accuracy: the share where log pi(y_c|x) > log pi(y_r|x), which they find
  barely moves from the reference model's own, because the reference is hard to overturn.
So the report puts the reference model's likelihood ranking accuracy next to both. Log-probs are
summed over the answer's tokens (the engine's `score`, cached); a tie counts as wrong. Intervals
are percentile bootstraps over pairs.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.base import ChatRequest, Engine
from prefdata.evals.stats import bootstrap_interval


class RankingEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    limit: int | None = Field(None, ge=1, description="Evaluate the first n pairs only.")
    n_bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of pairs for the intervals.")
    seed: int = 0


def _text(answer) -> str:
    """An answer as text: a message list's assistant turns joined, or the string itself."""
    if isinstance(answer, list):
        return "".join(m["content"] for m in answer if m.get("role") == "assistant")
    return str(answer)


def pair_logps(engine: Engine, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(log p(chosen | prompt), log p(rejected | prompt)) per pair under one engine's model."""
    reqs = [ChatRequest(messages=r["prompt"]) for r in rows]
    lp = engine.score(reqs + reqs, [_text(r["chosen"]) for r in rows] + [_text(r["rejected"]) for r in rows])
    n = len(rows)
    return np.asarray(lp[:n], dtype=float), np.asarray(lp[n:], dtype=float)


def summarize(pc: np.ndarray, pr: np.ndarray, rc: np.ndarray, rr: np.ndarray, cfg: RankingEvalConfig) -> dict:
    """pc, pr: policy log-probs of chosen and rejected; rc, rr: the reference's."""
    hits = {"implicit_reward": (pc - rc) > (pr - rr), "policy_likelihood": pc > pr, "reference_likelihood": rc > rr}
    n = len(pc)
    out: dict = {"pairs": n}
    for k, (name, h) in enumerate(hits.items()):
        h = h.astype(float)
        out[f"{name}_accuracy"] = float(h.mean()) if n else float("nan")
        out[f"{name}_ci95"] = bootstrap_interval(n, lambda i, h=h: float(h[i].mean()), cfg.n_bootstrap, cfg.seed + k)
    out["mean_implicit_margin"] = float(((pc - rc) - (pr - rr)).mean()) if n else float("nan")
    return out


def run_ranking_eval(policy: Engine, reference: Engine, rows: list[dict], cfg: RankingEvalConfig) -> dict:
    rows = rows[: cfg.limit] if cfg.limit else rows
    pc, pr = pair_logps(policy, rows)
    rc, rr = pair_logps(reference, rows)
    report = summarize(pc, pr, rc, rr, cfg)
    report["model"], report["reference"] = policy.model_id, reference.model_id
    return report


def format_report(r: dict) -> str:
    def row(label, key):
        lo, hi = r[f"{key}_ci95"]
        return f"| {label} | {r[f'{key}_accuracy']:.3f} | {lo:.3f} to {hi:.3f} |"

    return "\n".join([
        (f"Ranking accuracy of `{r.get('model', '?')}` against reference `{r.get('reference', '?')}` on "
         f"{r['pairs']} pairs (Chen et al. 2024); a tie counts as wrong."), "",
        "| ranking by | accuracy | 95% bootstrap interval |", "|---|---|---|",
        row("DPO implicit reward (policy vs reference log-ratio)", "implicit_reward"),
        row("policy likelihood", "policy_likelihood"),
        row("reference likelihood", "reference_likelihood"),
        "", f"Mean implicit margin (unscaled by beta): {r['mean_implicit_margin']:.3f}",
    ])
