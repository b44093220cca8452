"""`prefdata eval policy`: does model A answer a prompt set better than baseline B, per a judge?

Each prompt gets one answer from A and one from B (greedy by default, through the engines and their
request cache). The pairwise judge (`prefdata.judges.pairwise`) sees both orders; A wins a prompt
only when it wins in both, loses only when B wins in both, and anything else (order-dependent,
explicit tie, unparseable) is a tie. The win rate counts a tie as half a win.

Judges favour longer answers (Dubois et al. 2024, length-controlled AlpacaEval), so the report adds
a length-controlled win rate: a logistic regression of the outcome on x = log(len A / len B) and
the fitted P(A wins) at x = 0, i.e. at equal length. Prompts where A is longer and prompts where it
is shorter are weighted to equal total weight before the fit: when the outcome is (nearly) decided
by length alone the intercept is otherwise set by how unbalanced the two groups are, not by quality.
With A longer (or shorter) on every prompt, equal length is outside the data; the report says so.
When A and B answered most prompts identically, the report says that too: those ties measure nothing.
Both rates get a percentile bootstrap interval over prompts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.base import ChatRequest, Engine, SamplingParams
from prefdata.evals.stats import bootstrap_interval, logistic_fit, sigmoid

TEMPLATE_VERSION = "eval-policy-v1"


class PolicyEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    judge_method: str = Field("generate", pattern="^(generate|logprob)$",
                              description="generate ('Winner: A|B|tie', any engine) or logprob (' A' vs ' B').")
    max_tokens: int = Field(256, ge=1, le=8192, description="Answer length budget for A and B.")
    temperature: float = Field(0.0, ge=0, description="Answer sampling temperature; 0 = greedy.")
    judge_max_tokens: int = Field(128, ge=1, description="generate judge: tokens for its reasoning and verdict.")
    limit: int | None = Field(None, ge=1, description="Evaluate the first n prompts only.")
    n_bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of prompts for the intervals.")
    ridge: float = Field(1.0, gt=0, description="L2 penalty on the length slope (keeps a separable fit finite).")
    seed: int = 0


def answers(engine: Engine, prompts: list[list[dict]], cfg: PolicyEvalConfig) -> list[str]:
    reqs = [ChatRequest(messages=p, template_version=TEMPLATE_VERSION) for p in prompts]
    outs = engine.generate(reqs, SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                                                seed=cfg.seed))
    return [o[0].text for o in outs]


def outcomes(judge_engine: Engine, prompts: list[list[dict]], a: list[str], b: list[str],
             cfg: PolicyEvalConfig) -> tuple[list[float], list[list[str]]]:
    """Per prompt: 1.0 (A wins in both orders), 0.0 (B wins in both) or 0.5, and the judge's two texts."""
    from prefdata.judges.pairwise import PairwiseJudge

    judge = PairwiseJudge(method=cfg.judge_method, max_tokens=cfg.judge_max_tokens)
    verdicts, raw_ab, raw_ba = judge.judge(judge_engine, prompts, a, b, seed=cfg.seed)
    return [0.5 if v is None else float(v) for v in verdicts], [list(t) for t in zip(raw_ab, raw_ba)]


def log_length_ratio(a: list[str], b: list[str]) -> np.ndarray:
    """log((len A + 1) / (len B + 1)) in characters; +1 so an empty answer stays finite."""
    return np.log((np.array([len(t) for t in a]) + 1.0) / (np.array([len(t) for t in b]) + 1.0))


def balance_weights(x: np.ndarray) -> np.ndarray:
    """Weights giving prompts where A is longer and where it is shorter equal total weight (equal
    lengths weigh 1); all ones when one side is empty (nothing to balance)."""
    longer, shorter = x > 0, x < 0
    w = np.ones_like(x)
    if longer.any() and shorter.any():
        half = (longer.sum() + shorter.sum()) / 2.0
        w[longer] = half / longer.sum()
        w[shorter] = half / shorter.sum()
    return w


def length_controlled(y: np.ndarray, x: np.ndarray, ridge: float = 1.0) -> tuple[float, float]:
    """(P(A wins) at equal length, slope on the log length ratio)."""
    b0, b1 = logistic_fit(x, y, balance_weights(x), ridge=ridge)
    return sigmoid(b0), b1


def summarize(y: list[float], a: list[str], b: list[str], cfg: PolicyEvalConfig) -> dict:
    y_arr, x = np.asarray(y, dtype=float), log_length_ratio(a, b)
    n = len(y_arr)
    wins, losses = int((y_arr == 1.0).sum()), int((y_arr == 0.0).sum())
    lc, slope = length_controlled(y_arr, x, cfg.ridge) if n else (float("nan"), float("nan"))
    report = {
        "prompts": n, "wins": wins, "ties": n - wins - losses, "losses": losses,
        "win_rate": float(y_arr.mean()) if n else float("nan"),
        "win_rate_ci95": bootstrap_interval(n, lambda i: float(y_arr[i].mean()), cfg.n_bootstrap, cfg.seed),
        "length_controlled_win_rate": lc,
        "length_controlled_ci95": bootstrap_interval(
            n, lambda i: length_controlled(y_arr[i], x[i], cfg.ridge)[0], cfg.n_bootstrap, cfg.seed + 1),
        "length_slope": slope,
        "mean_log_length_ratio": float(x.mean()) if n else float("nan"),
        "share_model_longer": float((x > 0).mean()) if n else float("nan"),
    }
    same = sum(ta.strip() == tb.strip() for ta, tb in zip(a, b))
    report["identical_answers"] = same
    if n and same > n / 2:
        report["identical_note"] = identical_note(same, n)
    if n and ((x > 0).all() or (x < 0).all()):
        report["length_note"] = ("the model's answer is " + ("longer" if (x > 0).all() else "shorter") +
                                 " on every prompt, so equal length lies outside the data and the "
                                 "length-controlled rate is an extrapolation")
    return report


def identical_note(same: int, n: int) -> str:
    """The one sentence for a run where the two models mostly answered alike."""
    if same == n:
        return (f"The model and the baseline gave the same answer to all {n} prompts, so the judge had nothing to "
                "tell apart and these ties say nothing about which model is better")
    return (f"The model and the baseline gave the same answer to {same} of {n} prompts; those count as ties and "
            "say nothing about which model is better")


def run_policy_eval(model: Engine, baseline: Engine, judge: Engine, prompts: list[list[dict]],
                    cfg: PolicyEvalConfig) -> dict:
    """The whole evaluation on engines the caller holds (the CLI and the pipeline step build them)."""
    prompts = prompts[: cfg.limit] if cfg.limit else prompts
    a, b = answers(model, prompts, cfg), answers(baseline, prompts, cfg)
    y, raw = outcomes(judge, prompts, a, b, cfg)
    report = summarize(y, a, b, cfg)
    report["model"], report["baseline"], report["judge"] = model.model_id, baseline.model_id, judge.model_id
    from prefdata.judges.pairwise import PairwiseJudge

    report["judge_template"] = PairwiseJudge(method=cfg.judge_method).template_version
    report["rows"] = [{"prompt": p, "model_answer": ta, "baseline_answer": tb, "outcome": o, "judge_raw": r}
                      for p, ta, tb, o, r in zip(prompts, a, b, y, raw)]
    return report


def read_prompts(source: str) -> list[list[dict]]:
    """Prompt message lists from a store ref, a file (prompt or pair rows) or builtin:<set>."""
    from prefdata import io

    if source.startswith("builtin:"):
        path = Path(__file__).resolve().parents[1] / "data" / f"{source[8:]}.jsonl"
        if not path.is_file():
            from prefdata.errors import PrefdataError

            raise PrefdataError(f"unknown built-in prompt set '{source[8:]}'")
        source = str(path)
    return io.read(source).column("prompt").to_pylist()


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def format_report(r: dict) -> str:
    ci, lci = r["win_rate_ci95"], r["length_controlled_ci95"]
    lines = [
        (f"Policy `{r.get('model', '?')}` vs baseline `{r.get('baseline', '?')}`, judged by `{r.get('judge', '?')}` "
         f"in both orders on {r['prompts']} prompts (a win needs both orders)."), "",
        "| | value | 95% bootstrap interval |", "|---|---|---|",
        f"| wins / ties / losses | {r['wins']} / {r['ties']} / {r['losses']} | |",
        f"| win rate (tie = 1/2) | {_pct(r['win_rate'])} | {_pct(ci[0])} to {_pct(ci[1])} |",
        f"| length-controlled win rate | {_pct(r['length_controlled_win_rate'])} | {_pct(lci[0])} to {_pct(lci[1])} |",
        f"| share of prompts where the model is longer | {_pct(r['share_model_longer'])} | |",
        f"| length slope (log-odds per unit log length ratio) | {r['length_slope']:.3f} | |",
    ]
    if r.get("identical_note"):
        lines += ["", f"{r['identical_note']}."]
    if r.get("length_note"):
        lines += ["", f"Note: {r['length_note']}."]
    return "\n".join(lines)
