"""Rejection sampling: N candidates per prompt, scored by a reward source, kept by rank or by chance.

Modes (`mode`):
- best_of_n: RAFT (Dong et al. 2023, arXiv 2304.06767). Keep the top-k candidates per prompt as SFT
  rows, or pair the best against the worst.
- rso: statistical rejection sampling (Liu et al. 2023, arXiv 2309.06657, Algorithm 1). A candidate with
  reward r is accepted with probability exp((r - r_max) / beta), r_max the best reward among that
  prompt's candidates, so the accepted set approximates samples from the optimal policy
  pi*(y|x) ~ pi(y|x) exp(r(x, y) / beta). `rso_samples: m` repeats the sweep over the candidates not
  yet taken (r_max recomputed each time) until m are accepted, as the paper does. The accepted ones are
  then paired (tournament, or best vs rest) for DPO or the hinge loss.

Target count: with `target_rows`, rounds of N fresh samples per prompt run until that many rows exist
(then the list is cut to exactly that many) or a budget (`max_rounds`, `max_requests`,
`max_tokens_total`) runs out; `threshold` is the reward a kept row (an SFT row, a pair's chosen) must
reach. Round t asks the engine with seed offset t * ROUND_OFFSET, so every round draws new samples and
a rerun after a kill replays the finished rounds from the request cache and yields the same rows.

Every candidate, with its score, acceptance probability and whether it was used, goes into the
`candidates` side table (the schema `self_reward` writes, `prefdata.schema.CANDIDATE`, plus columns).

`self_reward` is a preset of this sampler: one round of best_of_n, best_vs_worst, scored by the judge
scorer with the paper's defaults (`Preset` holds what it keeps of its own: cache keys, tie rule).

    from prefdata.generators import rejection
    res = rejection.generate(prompts, engine, rejection.RejectionSamplingConfig(mode="rso"), reward=my_fn)
    res.rows, res.candidates, res.rounds
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, field_validator, model_validator

from prefdata import quality
from prefdata.engines.base import ChatRequest, Completion, Engine
from prefdata.generators.common import (
    SamplingConfig,
    assistant,
    clean_output,
    degenerate_reason,
    generator_card,
    histogram_figure,
    pair_quality,
    pair_table,
)
from prefdata.rewards import score as scoring
from prefdata.rewards.score import JudgeScorer, ScorerSpec
from prefdata.schema import CANDIDATE, COMPLETION, content_id
from prefdata.steps import StepResult, step

NAME = "rejection_sampling"
TEMPLATE_VERSION = "rejection-1"  # candidates are the prompt as given; the version keys the cache
ROUND_OFFSET = 104_729  # seed offset per round (a prime, far from sample_with_retries' 7919 steps)

CANDIDATES = pa.schema(list(CANDIDATE) + [
    pa.field("round", pa.int64()),
    pa.field("sample", pa.int64()),
    pa.field("accept_prob", pa.float64()),  # rso: exp((r - r_max) / beta); null in best_of_n
    pa.field("accepted", pa.bool_()),  # in the pool rows are built from (rso: accepted; best_of_n: scored)
    pa.field("selected", pa.bool_()),  # used in an output row
])


class RejectionSamplingConfig(SamplingConfig):
    mode: Literal["best_of_n", "rso"] = Field("best_of_n", description="best_of_n: RAFT, keep by rank (Dong et "
                                              "al. 2023, arXiv 2304.06767). rso: keep with probability exp((r - "
                                              "r_max)/beta) (Liu et al. 2023, arXiv 2309.06657, Algorithm 1).")
    output: Literal["pairs", "sft"] = Field("pairs", description="pairs: preference pairs (DPO, hinge); sft: "
                                            "completion rows (the top_k per prompt, or RSO's accepted ones).")
    pairing: Literal["best_vs_worst", "best_vs_rest", "tournament"] | None = Field(
        None, description="How pairs are built from the pool (best_of_n: the scored candidates; rso: the accepted "
        "ones): best_vs_worst (1 pair), best_vs_rest (m-1 pairs), tournament (random disjoint pairs, higher "
        "reward chosen: RSO's default). Default: best_vs_worst for best_of_n, tournament for rso.")
    n_candidates: int = Field(8, ge=2, le=256, description="Samples per prompt per round, in [2, 256] (RSO "
                              "samples 64 and keeps 8; RAFT uses 8 on CPU-sized runs).")
    top_k: int = Field(1, ge=1, le=256, description="best_of_n with output sft: rows kept per prompt per round "
                       "(RAFT keeps the best 1/k of the batch; here, per prompt), <= n_candidates.")
    beta: float = Field(0.5, gt=0, le=100, description="rso: temperature of the target policy, in (0, 100]; "
                        "smaller keeps only near-best candidates (the paper: 0.5).")
    rso_samples: int | None = Field(None, ge=1, le=256, description="rso: sweep until this many are accepted "
                                    "(the paper: 8 of 64); default one sweep, each candidate accepted independently.")
    temperature: float = Field(1.0, ge=0, le=2, description="Candidate sampling temperature, in [0, 2]; both "
                               "papers sample the policy as it is (1.0). 0 gives N identical candidates.")
    top_p: float = Field(1.0, gt=0, le=1, description="Candidate nucleus sampling, in (0, 1]; 1 (off) samples the "
                         "policy itself, which RSO's acceptance rule assumes.")
    reward: ScorerSpec = Field(default_factory=JudgeScorer, description="The reward source: {type: reward_model, "
                               "model: PATH | step:<train_reward step>} or {type: judge, method: generate|logprob, "
                               "engine: {...}} (default: the pipeline's model judges its own candidates).")
    threshold: float | None = Field(None, description="A kept row (SFT row, a pair's chosen) needs reward >= "
                                    "this; in the reward's units (judge: 0..5).")
    target_rows: int | None = Field(None, ge=1, description="Stop once this many rows exist (exactly this many "
                                    "are kept); needs max_rounds > 1 to go past one round.")
    max_rounds: int = Field(1, ge=1, le=10_000, description="Rounds budget: each round samples n_candidates "
                            "fresh candidates for every prompt.")
    max_requests: int | None = Field(None, ge=2, description="Candidate-samples budget (cache hits included, so "
                                     "a rerun stops at the same place); a round that does not fit is cut to the "
                                     "prompts that do.")
    max_tokens_total: int | None = Field(None, ge=1, description="Generated-tokens budget for candidates; a round "
                                         "runs only for the prompts whose worst case (n_candidates x max_tokens) "
                                         "still fits, so it is never exceeded.")

    @field_validator("reward", mode="before")
    @classmethod
    def _pairwise_only(cls, v):
        if isinstance(v, dict) and v.get("type") in ("heads", "finetuned_rm"):
            raise ValueError(f"a '{v['type']}' voter trains on the labelled pairs it votes on, and candidates have "
                             "no labels; train a reward model first (a train_reward step) and score with "
                             "{type: reward_model, model: step:<that step>}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.top_k > self.n_candidates:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_candidates ({self.n_candidates})")
        if self.rso_samples is not None and self.rso_samples > self.n_candidates:
            raise ValueError(f"rso_samples ({self.rso_samples}) must be <= n_candidates ({self.n_candidates})")
        if self.pairing is not None and self.output != "pairs":
            raise ValueError("pairing applies to output: pairs only")
        if self.max_requests is not None and self.max_requests < self.n_candidates:
            raise ValueError(f"max_requests ({self.max_requests}) is below one prompt's round "
                             f"(n_candidates = {self.n_candidates})")
        return self

    @property
    def pairing_used(self) -> str:
        return self.pairing or ("tournament" if self.mode == "rso" else "best_vs_worst")


@dataclass
class RejectionResult:
    rows: pa.Table  # PAIR or COMPLETION rows
    kind: str  # "pair" | "completion"
    candidates: pa.Table  # CANDIDATES
    rounds: list[dict] = field(default_factory=list)  # per-round counts (the card's acceptance table)
    stopped_by: str = ""
    scorer: str = ""
    report: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- acceptance (pure)


def accept_prob(rewards: np.ndarray, beta: float) -> np.ndarray:
    """exp((r - r_max) / beta) for one prompt's candidates: 1 for the best, in (0, 1] for the rest."""
    return np.exp((rewards - rewards.max()) / beta)


def rso_accept(rewards: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """One sweep: candidate i is accepted when u_i < exp((r_i - r_max)/beta), u_i ~ U[0, 1). Bool mask."""
    return rng.random(len(rewards)) < accept_prob(rewards, beta)


def rso_sweep(rewards: np.ndarray, beta: float, m: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's loop: sweep the candidates not yet taken, with r_max over those, until m are accepted.
    Returns the accepted indices in acceptance order. Ends: each sweep accepts at least its best."""
    left = np.arange(len(rewards))
    taken: list[int] = []
    while len(taken) < m and left.size:
        hit = left[rso_accept(rewards[left], beta, rng)][: m - len(taken)]
        taken += hit.tolist()
        left = left[~np.isin(left, hit)]
    return np.asarray(taken, dtype=np.int64)


def prompt_rng(seed: int, round_: int, prompt_id: str) -> np.random.Generator:
    """One generator per (seed, round, prompt): acceptance does not depend on order, batching or resume."""
    return np.random.default_rng([seed, round_, int(content_id(prompt_id), 16)])


def make_pairs(idx: np.ndarray, r: np.ndarray, how: str, rng: np.random.Generator,
               later_first: bool = False) -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices from a pool `idx` with rewards `r[idx]`; ties are no pair.
    Equal rewards rank the earlier sample first, or the later one with `later_first` (self_reward's
    rule: of tied best the last is chosen, of tied worst the first is rejected)."""
    if idx.size < 2:
        return []
    if how == "tournament":
        order = idx[rng.permutation(idx.size)]
        duels = [(order[i], order[i + 1]) for i in range(0, order.size - 1, 2)]
        return [(a, b) if r[a] > r[b] else (b, a) for a, b in duels if r[a] != r[b]]
    ranked = idx[np.lexsort((-idx if later_first else idx, -r[idx]))]  # best first
    best = ranked[0]
    rest = ranked[1:] if how == "best_vs_rest" else ranked[-1:]
    return [(best, j) for j in rest if r[best] > r[j]]


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Preset:
    """What a generator built on this sampler keeps of its own besides config values (`self_reward`:
    its request cache keys, the paper's tie rule and its candidates table)."""

    template_version: str = TEMPLATE_VERSION  # of the candidate requests: part of their cache key
    later_wins_ties: bool = False  # best_vs_worst: of equal rewards the later sample is chosen, the earlier rejected
    score_filtered: bool = False  # score degenerate candidates too: in the side table, never in a row
    dedupe: bool = True  # drop a row equal to an earlier one (a sharded step must not: it would depend on shards)


@dataclass
class _Tally:
    """What the rounds have made so far."""

    rows: list[dict] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    candidates: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    requests: int = 0
    tokens: int = 0
    trimmed: int = 0
    scorer: str = ""
    template: str | None = None

    def full(self, cfg: RejectionSamplingConfig) -> bool:
        return cfg.target_rows is not None and len(self.rows) >= cfg.target_rows


@dataclass
class _Round:
    """One round's candidates, per prompt and sample."""

    t: int
    prompts: list[dict]
    outs: list[list[Completion]]
    texts: list[list[str]]
    why: list[list[str | None]]  # why a candidate is unusable; None when usable
    scores: np.ndarray  # (prompts, n_candidates) rewards, NaN where not scored
    judged: dict[tuple[int, int], tuple[list, list]] = field(default_factory=dict)  # (i, j) -> (raws, parsed)


def generate(prompts: pa.Table, engine: Engine, config: RejectionSamplingConfig | None = None, *, seed: int = 0,
             reward: Callable | None = None, engine_for: Callable | None = None,
             progress: bool = True, preset: Preset = Preset()) -> RejectionResult:
    """Rounds of sample -> score -> select until the target or a budget stops them (module docstring).

    `reward` (Python API) replaces `config.reward` with a function (prompts, answers) -> rewards;
    `engine_for(overrides)` gives the judge's engine (default: `engine`)."""
    from prefdata.progress import progress_bar

    cfg = config or RejectionSamplingConfig()
    spec = reward if reward is not None else cfg.reward
    engine_for = engine_for or (lambda _overrides: engine)
    rows = prompts.select(["id", "prompt"]).to_pylist()
    tally, stopped = _Tally(), ""
    with progress_bar(f"{NAME} rounds", total=cfg.max_rounds if cfg.max_rounds > 1 else 0, unit="rounds",
                      disable=not progress) as advance:
        for t in range(cfg.max_rounds):
            limit_by, fit = _affordable(cfg, tally, len(rows))
            if fit <= 0:
                stopped = limit_by
                break
            rnd = _sample(engine, rows[:fit], cfg, seed, t, preset, tally)
            _score(rnd, spec, engine_for, seed, progress, preset.score_filtered, tally)
            tally.rounds.append(_collect(rnd, engine, cfg, seed, preset, tally))
            advance(1, f"{len(tally.rows)} rows")
        else:
            stopped = "target_rows" if tally.full(cfg) else "max_rounds"
    return _result(len(rows), cfg, spec, tally, stopped)


def _affordable(cfg: RejectionSamplingConfig, tally: _Tally, prompts: int) -> tuple[str, int]:
    """How many prompts the next round can take, and what limits it: a budget is never overrun, a round
    is cut instead."""
    if tally.full(cfg):
        return "target_rows", 0
    fits = {"no prompts": prompts}
    if cfg.max_requests is not None:
        fits["max_requests"] = (cfg.max_requests - tally.requests) // cfg.n_candidates
    if cfg.max_tokens_total is not None:
        fits["max_tokens_total"] = (cfg.max_tokens_total - tally.tokens) // (cfg.n_candidates * cfg.max_tokens)
    return min(fits.items(), key=lambda kv: kv[1])


def _sample(engine: Engine, active: list[dict], cfg: RejectionSamplingConfig, seed: int, t: int, preset: Preset,
            tally: _Tally) -> _Round:
    """Round t's candidates for `active`, each with why it is unusable (None when usable)."""
    reqs = [ChatRequest(messages=r["prompt"], template_version=preset.template_version, seed_offset=t * ROUND_OFFSET,
                        request_id=r["id"]) for r in active]
    outs = engine.generate(reqs, cfg.sampling(seed, n=cfg.n_candidates))
    tally.requests += len(active) * cfg.n_candidates
    tally.tokens += sum(c.num_tokens for cs in outs for c in cs)
    texts = [[clean_output(c.text) for c in cs] for cs in outs]
    why = [[f"engine error: {c.error}" if c.finish_reason == "error" else degenerate_reason(x)
            for c, x in zip(cs, xs)] for cs, xs in zip(outs, texts)]
    return _Round(t, active, outs, texts, why, np.full((len(active), cfg.n_candidates), np.nan))


def _score(rnd: _Round, spec, engine_for: Callable, seed: int, progress: bool, every: bool, tally: _Tally) -> None:
    """Scores the usable candidates (`every`: all of them) into `rnd`, with a judge's evidence, in one call."""
    flat = [(i, j) for i, ws in enumerate(rnd.why) for j, w in enumerate(ws) if every or w is None]
    if not flat:
        return
    sc = scoring.score([rnd.prompts[i]["prompt"] for i, _ in flat], [rnd.texts[i][j] for i, j in flat], spec,
                       engine_for=engine_for, seed=seed, progress=progress)
    tally.scorer, tally.template = sc.name, sc.template
    for k, (i, j) in enumerate(flat):
        rnd.scores[i, j] = sc.values[k]
        if sc.judgements:
            rnd.judged[(i, j)] = (sc.judgements[k], sc.judge_scores[k])


def _collect(rnd: _Round, engine: Engine, cfg: RejectionSamplingConfig, seed: int, preset: Preset,
             tally: _Tally) -> dict:
    """One round's rows and candidate rows, into the tally; returns the round's counts."""
    n = cfg.n_candidates
    stats = {"round": rnd.t + 1, "prompts": len(rnd.prompts), "candidates": len(rnd.prompts) * n, "scored": 0,
             "accepted": 0, "passed": 0, "rows": 0}
    for i, r in enumerate(rnd.prompts):
        usable = np.where([w is None for w in rnd.why[i]], rnd.scores[i], np.nan)  # (n,)
        new_rows, flags, probs = _select(r, rnd.texts[i], usable, cfg, prompt_rng(seed, rnd.t, r["id"]), tally.dropped,
                                         later_first=preset.later_wins_ties)
        stats["scored"] += int(np.isfinite(usable).sum())
        stats["accepted"] += int(flags["accepted"].sum())
        stats["passed"] += int(flags["passed"].sum())
        for row, used in new_rows:
            if _keep(row, rnd.outs[i][used[0]], used[0], rnd.t, engine, cfg, seed, preset, tally):
                stats["rows"] += 1
                flags["selected"][list(used)] = True
        for j in range(n):
            raw, parsed = rnd.judged.get((i, j), ([], []))
            tally.candidates.append(_candidate_row(r, rnd.texts[i][j], rnd.outs[i][j], engine, cfg, seed, rnd.t, j,
                                                   rnd.scores[i, j], rnd.why[i][j], raw, parsed, probs[j], flags, j))
    stats.update({"acceptance_rate": round(stats["accepted"] / max(stats["candidates"], 1), 4),
                  "total_rows": len(tally.rows), "requests": tally.requests, "tokens": tally.tokens})
    return stats


def _keep(row: dict, comp: Completion, j: int, t: int, engine: Engine, cfg: RejectionSamplingConfig, seed: int,
          preset: Preset, tally: _Tally) -> bool:
    """Adds a row unless it repeats an earlier one or the target is met already. `comp`, `j`: the
    completion and sample index an SFT row is made of."""
    key = row.get("id") or content_id(row["prompt"], row["chosen"], row["rejected"])
    if preset.dedupe and key in tally.seen:
        tally.dropped["duplicate of an earlier row"] += 1
        return False
    if tally.full(cfg):
        tally.trimmed += 1
        return False
    tally.seen.add(key)
    row = {**row, "meta": {**row["meta"], "round": t + 1}}
    if cfg.output == "sft":
        row.update({"engine": engine.name, "model": engine.model_id, "finish_reason": comp.finish_reason,
                    "logprob": comp.logprob, "sampling": _sampling(cfg, seed, t, j)})
    tally.rows.append(row)
    return True


def _result(prompts: int, cfg: RejectionSamplingConfig, spec, tally: _Tally, stopped: str) -> RejectionResult:
    kind = "pair" if cfg.output == "pairs" else "completion"
    table = pair_table(tally.rows) if kind == "pair" else _completion_table(tally.rows)
    scorer = tally.scorer or _spec_name(spec)
    cands = tally.candidates
    report = {"input_examples": prompts, "rows": len(tally.rows), "rounds": len(tally.rounds), "stopped_by": stopped,
              "candidates": len(cands), "requests": tally.requests, "tokens": tally.tokens,
              "acceptance_rate": round(sum(s["accepted"] for s in tally.rounds) / max(len(cands), 1), 4),
              "trimmed_beyond_target": tally.trimmed, "dropped": sum(tally.dropped.values()),
              "drop_reasons": dict(tally.dropped)}
    return RejectionResult(rows=table, kind=kind, candidates=pa.Table.from_pylist(cands, schema=CANDIDATES),
                           rounds=tally.rounds, stopped_by=stopped, scorer=scorer,
                           report={**report, "scorer": scorer, "judge_template": tally.template})


def _select(r: dict, texts: list[str], s: np.ndarray, cfg: RejectionSamplingConfig, rng, dropped: Counter,
            later_first: bool = False):
    """Rows from one prompt's round: [(row, candidate indices used)], per-candidate flags, accept probs.
    `s`: (n,) rewards, NaN where a candidate is unusable or unscored."""
    n = len(texts)
    valid = np.flatnonzero(np.isfinite(s))
    probs = np.full(n, np.nan)
    accepted = np.zeros(n, dtype=bool)
    if cfg.mode == "rso" and valid.size:
        probs[valid] = accept_prob(s[valid], cfg.beta)
        hit = valid[rso_sweep(s[valid], cfg.beta, cfg.rso_samples, rng)] if cfg.rso_samples else \
            valid[rso_accept(s[valid], cfg.beta, rng)]
        accepted[hit] = True
    else:
        accepted[valid] = True
    passed = accepted & (s >= cfg.threshold if cfg.threshold is not None else np.isfinite(s))
    flags = {"accepted": accepted, "passed": passed, "selected": np.zeros(n, dtype=bool)}
    pool = np.flatnonzero(accepted)
    if valid.size == 0:
        dropped["no candidate could be scored"] += 1
        return [], flags, probs
    src = f"{NAME}/{TEMPLATE_VERSION}:{cfg.mode}"
    meta = {"prompt_id": r["id"], "mode": cfg.mode}
    if cfg.output == "sft":
        keep = np.flatnonzero(passed)
        keep = keep[np.lexsort((keep, -s[keep]))]  # best first, earlier sample on ties
        if cfg.mode == "best_of_n":
            keep = keep[: cfg.top_k]
        if keep.size == 0:
            dropped["no candidate reached the threshold"] += 1
        return [({"id": content_id(r["id"], texts[j]), "prompt_id": r["id"], "prompt": r["prompt"],
                  "completion": assistant(texts[j]), "source": src, "score": float(s[j]),
                  "meta": {**meta, "sample": int(j), "rank": rank}}, [j])
                for rank, j in enumerate(keep)], flags, probs
    duels = make_pairs(pool, s, cfg.pairing_used, rng, later_first=later_first)
    if not duels:
        dropped["fewer than 2 candidates with different rewards" if pool.size >= 2 and cfg.pairing_used != "tournament"
                else "tournament gave only ties" if pool.size >= 2 else
                "fewer than 2 accepted candidates" if cfg.mode == "rso" else "fewer than 2 scored candidates"] += 1
    rows = []
    for c, j in duels:
        if not passed[c]:
            dropped["chosen below the threshold"] += 1
            continue
        rows.append(({"prompt": r["prompt"], "chosen": assistant(texts[c]), "rejected": assistant(texts[j]),
                      "source": src, "chosen_score": float(s[c]), "rejected_score": float(s[j]),
                      "margin": float(s[c] - s[j]),
                      "meta": {**meta, "pairing": cfg.pairing_used, "chosen_sample": int(c),
                               "rejected_sample": int(j)}}, [c, j]))
    return rows, flags, probs


def _candidate_row(r, text, comp, engine, cfg, seed, t, j, score, why, raw, parsed, prob, flags, k) -> dict:
    return {"id": content_id(r["id"], t, j, text), "prompt_id": r["id"], "prompt": r["prompt"],
            "completion": assistant(text), "engine": engine.name, "model": engine.model_id,
            "sampling": _sampling(cfg, seed, t, j),
            "finish_reason": comp.finish_reason, "logprob": comp.logprob, "judgements": raw, "judge_scores": parsed,
            "score": None if not np.isfinite(score) else float(score), "filtered": why, "round": t + 1, "sample": j,
            "accept_prob": None if not np.isfinite(prob) else float(prob), "accepted": bool(flags["accepted"][k]),
            "selected": bool(flags["selected"][k])}


def _sampling(cfg: RejectionSamplingConfig, seed: int, t: int, j: int) -> str:
    return json.dumps({"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": seed,
                       "seed_offset": t * ROUND_OFFSET, "sample": int(j)})


def _completion_table(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in COMPLETION}
    table = pa.table(cols, schema=COMPLETION)
    table = table.append_column("source", pa.array([r["source"] for r in rows], pa.string()))
    table = table.append_column("score", pa.array([r["score"] for r in rows], pa.float64()))
    return table.append_column("meta", pa.array([json.dumps(r["meta"], sort_keys=True) for r in rows], pa.string()))


def _spec_name(spec) -> str:
    if callable(spec) and not isinstance(spec, BaseModel):
        return getattr(spec, "__name__", "reward_fn")
    return f"rm:{spec.model}" if getattr(spec, "type", "") == "reward_model" else "judge"


# ----------------------------------------------------------------------------- step


STOP_TEXT = {"target_rows": "the target row count was reached", "max_rounds": "the rounds budget (max_rounds) ran out",
             "max_requests": "the request budget (max_requests) ran out",
             "max_tokens_total": "the token budget (max_tokens_total) ran out", "no prompts": "there were no prompts"}


def rounds_markdown(rounds: list[dict]) -> str:
    head = [("| round | prompts | candidates | scored | accepted | acceptance rate | passed threshold | rows added "
             "| rows so far | requests so far | tokens so far |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + [f"| {s['round']} | {s['prompts']} | {s['candidates']} | {s['scored']} | {s['accepted']} "
                             f"| {s['acceptance_rate']:.1%} | {s['passed']} | {s['rows']} | {s['total_rows']} "
                             f"| {s['requests']} | {s['tokens']} |" for s in rounds])


def quality_counts(res: RejectionResult) -> dict:
    """`prefdata.quality` counts of the rows: finish reasons of the candidates they use, the judge's
    unparseable judgements and agreement (when a judge scored), labels of pairs."""
    c = res.candidates.select(["prompt_id", "round", "sample", "finish_reason", "judge_scores"]).to_pydict()
    fin = {(p, t, j): f for p, t, j, f in zip(c["prompt_id"], c["round"], c["sample"], c["finish_reason"])}
    judged, lists = {}, c["judge_scores"]
    if any(lists):  # a generating judge scored: its judgements per candidate (logprob judges write none)
        judged = {"parse": (sum(len(x) for x in lists), sum(v is None for x in lists for v in x)),
                  "parse_what": "judgements", "repeated": lists}
    if res.kind == "pair":
        metas = [json.loads(m) for m in res.rows.column("meta").to_pylist()]
        return pair_quality(res.rows, finish=[fin.get((m["prompt_id"], m["round"], m[k])) for m in metas
                                              for k in ("chosen_sample", "rejected_sample")], **judged)
    return quality.measure([m[-1]["content"] for m in res.rows.column("completion").to_pylist()], kind="sft",
                           finish=res.rows.column("finish_reason").to_pylist(), **judged)


def card_sections(res: RejectionResult, cfg: RejectionSamplingConfig, q: dict | None = None) -> list[tuple[str, str]]:
    rep = res.report
    how = (f"RSO statistical rejection sampling (Liu et al. 2023, arXiv 2309.06657): each candidate accepted "
           f"with probability exp((r - r_max)/beta), beta = {cfg.beta:g}"
           + (f", swept until {cfg.rso_samples} are accepted" if cfg.rso_samples else ", one sweep")
           if cfg.mode == "rso" else "RAFT / best-of-N (Dong et al. 2023, arXiv 2304.06767): candidates kept by rank")
    what = (f"pairs ({cfg.pairing_used})" if cfg.output == "pairs" else
            (f"SFT rows (top {cfg.top_k} per prompt and round)" if cfg.mode == "best_of_n" else "SFT rows (accepted)"))
    target = f"target {cfg.target_rows} rows" if cfg.target_rows else "no target count"
    limits = (("max_rounds", cfg.max_rounds), ("max_requests", cfg.max_requests),
              ("max_tokens_total", cfg.max_tokens_total))
    budgets = ", ".join(f"{k} {v}" for k, v in limits if v is not None)
    stop = (f"**Stopped by:** {STOP_TEXT.get(res.stopped_by, res.stopped_by)} after {rep['rounds']} rounds, "
            f"{rep['requests']} candidate requests and {rep['tokens']} generated tokens ({target}; budgets: {budgets}"
            + (f"; threshold {cfg.threshold:g}" if cfg.threshold is not None else "") + ")."
            + (f" {rep['trimmed_beyond_target']} rows past the target were left out to keep the count exact."
               if rep["trimmed_beyond_target"] else ""))
    summary = ("Rejection sampling", (f"{rep['rows']} {what} from {rep['input_examples']} prompts; "
               f"{cfg.n_candidates} candidates per prompt and round scored by `{res.scorer}`. {how}. All "
               f"{rep['candidates']} candidates, with score, acceptance probability and use, are in the "
               "`candidates` side table."))
    examples = None if res.kind == "pair" else "\n".join(
        f"- ({r['score']:.3g}) {r['completion'][-1]['content'][:300]}" for r in res.rows.slice(0, 3).to_pylist()) \
        or "(no rows)"
    sections, _ = generator_card(summary, res.rows, rep, examples=examples, quality=q,
                                 sections=[("Rounds and acceptance", stop + "\n\n" + rounds_markdown(res.rounds))])
    return sections


# Whole input, never sharded: the target count and the budgets are over all prompts together.
@step(NAME, config=RejectionSamplingConfig, input="prompt", output="pair", streaming=False)
def run_step(cfg: RejectionSamplingConfig, table: pa.Table, ctx):
    """Best-of-N (RAFT) or RSO rejection sampling, with a target count and budgets."""
    engine = ctx.engine()
    res = generate(table, engine, cfg, seed=ctx.seed, engine_for=lambda ov: ctx.engine(ov) if ov else engine)
    scores = [s for s in res.candidates.column("score").to_pylist() if s is not None]
    kept = [s for s, u in zip(res.candidates.column("score").to_pylist(),
                              res.candidates.column("selected").to_pylist()) if u and s is not None]
    # Not "scores": the store card draws its own plot under that name (chosen vs rejected scores).
    figures = {"candidate_rewards": histogram_figure({"all candidates": scores, "used in a row": kept},
                                          "Rejection sampling: candidate rewards", "reward")} if scores else {}
    templates = {"rejection_sampling": TEMPLATE_VERSION}
    if res.report.get("judge_template"):
        templates["rubric_judge"] = res.report["judge_template"]
    q = quality_counts(res)
    return StepResult(tables={"train": res.rows}, kind=res.kind, card_sections=card_sections(res, cfg, q),
                      figures=figures, report=res.report,
                      lineage={"description": quality.headline(q), "templates": templates, "scorer": res.scorer, "rounds": res.rounds,
                               "stopped_by": res.stopped_by},
                      side_tables={"candidates": ("completion", res.candidates)})
