"""Self-rewarding pairs: the policy answers N times and judges its own answers (Yuan et al. 2024,
arXiv 2401.10020).

Per prompt: N candidates (T 0.7, top-p 0.9), each judged k times with the additive 5-point rubric;
a candidate's score is the mean of its parseable judgements. The pair is best vs worst; a tie at
the top and bottom gives no pair. margin = score gap. Every candidate, with every raw judgement and
parsed score (null when unparseable), is kept in a candidates side table.

    from prefdata.generators import self_reward
    pairs, candidates = self_reward.generate(prompts, engine, self_reward.SelfRewardConfig())
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
from pydantic import Field

from prefdata import quality
from prefdata.engines import EngineOverrides
from prefdata.engines.base import ChatRequest, Engine
from prefdata.generators.common import (
    SamplingConfig,
    assistant,
    clean_output,
    degenerate_reason,
    draws_figures,
    generator_card,
    histogram_figure,
    pair_quality,
    pair_table,
)
from prefdata.judges import pointwise
from prefdata.schema import CANDIDATE, content_id
from prefdata.steps import StepResult, step

NAME = "self_reward"
TEMPLATE_VERSION = "self-reward-1"
CANDIDATES = CANDIDATE  # the one candidates table (prefdata.schema), also written by rejection sampling


class SelfRewardConfig(SamplingConfig):
    n_candidates: int = Field(4, ge=2, le=64, description="Candidates per prompt, in [2, 64] (Yuan et al. 2024, "
                              "arXiv 2401.10020: N=4).")
    temperature: float = Field(0.7, ge=0, le=2, description="Candidate sampling temperature, in [0, 2] (the paper: 0.7).")
    top_p: float = Field(0.9, gt=0, le=1, description="Candidate nucleus sampling, in (0, 1] (the paper: 0.9).")
    judgements: int = Field(3, ge=1, le=16, description="Judgements per candidate, in [1, 16] (the paper: 3); the "
                            "score is the mean of the parseable ones.")
    judge_temperature: float = Field(0.7, ge=0, le=2, description="Judge sampling temperature; > 0 so repeated "
                                     "judgements differ (their agreement is reported).")
    judge_max_tokens: int = Field(160, ge=8, le=4096, description="New tokens per judgement; the score line must "
                                  "fit (judge_score_first needs only a few).")
    judge_score_first: bool = Field(False, description="Ask for 'Score: n' first (as an assistant prefix) instead "
                                    "of after the justification; far fewer unparseable judgements from small models.")
    judge_engine: EngineOverrides | None = Field(None, description="Engine overrides for the judge (e.g. {model: ...}); "
                                      "default: the policy judges itself, as in the paper.")


def generate(prompts: pa.Table, engine: Engine, config: SelfRewardConfig | None = None, *, seed: int = 0,
             judge_engine: Engine | None = None, report: dict | None = None) -> tuple[pa.Table, pa.Table]:
    cfg = config or SelfRewardConfig()
    judge_engine = judge_engine or engine
    rows = prompts.select(["id", "prompt"]).to_pylist()
    reqs = [ChatRequest(messages=r["prompt"], template_version=TEMPLATE_VERSION, request_id=r["id"]) for r in rows]
    outs = engine.generate(reqs, cfg.sampling(seed, n=cfg.n_candidates))
    texts = [[clean_output(c.text) for c in cs] for cs in outs]
    flat_prompts = [r["prompt"] for r, ts in zip(rows, texts) for _ in ts]
    flat_texts = [t for ts in texts for t in ts]
    judge = pointwise.RubricJudge(k=cfg.judgements, temperature=cfg.judge_temperature, max_tokens=cfg.judge_max_tokens,
                                  score_first=cfg.judge_score_first)
    raws, scores, means = judge.judge(judge_engine, flat_prompts, flat_texts, seed=seed)

    cand_rows, pairs, dropped = [], [], Counter()
    k = 0
    for ri, (r, cands) in enumerate(zip(rows, texts)):
        scored = []
        for j, text in enumerate(cands):
            bad = degenerate_reason(text)
            cand_rows.append({
                "id": content_id(r["id"], j, text), "prompt_id": r["id"], "prompt": r["prompt"],
                "completion": [{"role": "assistant", "content": text}], "engine": engine.name,
                "model": engine.model_id, "sampling": json.dumps({"temperature": cfg.temperature, "top_p": cfg.top_p,
                                                                  "seed": seed, "sample": j}),
                "finish_reason": outs[ri][j].finish_reason, "logprob": None,
                "judgements": raws[k], "judge_scores": scores[k], "score": means[k], "filtered": bad,
            })
            if bad is None and means[k] is not None:
                scored.append((means[k], j))
            k += 1
        if len(scored) < 2:
            dropped["fewer than 2 candidates with a parseable score"] += 1
            continue
        best, worst = max(scored), min(scored)
        if best[0] == worst[0]:
            dropped["tie between best and worst"] += 1
            continue
        pairs.append({"prompt": r["prompt"], "chosen": assistant(cands[best[1]]), "rejected": assistant(cands[worst[1]]),
                      "source": f"{NAME}/{TEMPLATE_VERSION}+{judge.template_version}",
                      "chosen_score": best[0], "rejected_score": worst[0], "margin": best[0] - worst[0],
                      "meta": {"prompt_id": r["id"], "chosen_index": best[1], "rejected_index": worst[1]}})
    all_scores = [s for c in cand_rows for s in c["judge_scores"]]
    if report is not None:
        report.update({"input_examples": len(rows), "pairs": len(pairs), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped), "candidates": len(cand_rows),
                       "judgements": len(all_scores),
                       "unparseable_rate": round(sum(s is None for s in all_scores) / max(len(all_scores), 1), 4),
                       "tie_rate": round(dropped["tie between best and worst"] / max(len(rows), 1), 4),
                       "judge_agreement": judge_agreement([c["judge_scores"] for c in cand_rows])})
    return pair_table(pairs), pa.Table.from_pylist(cand_rows, schema=CANDIDATES)


def judge_agreement(score_lists: list[list[float | None]]) -> dict:
    """How consistent repeated judgements of the same answer are: exact-agreement rate over pairs of
    parseable judgements, and the mean within-answer std."""
    same = total = 0
    stds = []
    for s in score_lists:
        v = [x for x in s if x is not None]
        for i in range(len(v)):
            for j in range(i + 1, len(v)):
                total += 1
                same += v[i] == v[j]
        if len(v) >= 2:
            stds.append(float(np.std(v)))
    return {"exact_agreement": round(same / total, 4) if total else None,
            "mean_within_std": round(float(np.mean(stds)), 4) if stds else None}


@step(NAME, config=SelfRewardConfig, input="prompt", output="pair")
def run_step(cfg: SelfRewardConfig, table: pa.Table, ctx):

    report: dict = {}
    engine = ctx.engine()
    judge = ctx.engine(cfg.judge_engine) if cfg.judge_engine else engine
    pairs, cands = generate(table, engine, cfg, seed=ctx.seed, judge_engine=judge, report=report)
    scores = [s for s in cands.column("score").to_pylist() if s is not None]
    single = [s for ss in cands.column("judge_scores").to_pylist() for s in ss if s is not None]
    dist = Counter(round(s) for s in single)
    agree = report["judge_agreement"]
    stats = ("Judge statistics", "\n".join([
        "| | |", "|---|---|", f"| judgements | {report['judgements']} |",
        f"| unparseable rate | {report['unparseable_rate']:.1%} |",
        f"| tie rate (prompts whose best and worst tie) | {report['tie_rate']:.1%} |",
        f"| exact agreement between repeated judgements | {_fmt(agree['exact_agreement'])} |",
        f"| mean std of repeated judgements | {_fmt(agree['mean_within_std'])} |",
        "| judgement score distribution | " + (", ".join(f"{k}: {v}" for k, v in sorted(dist.items())) or "-") + " |"]))
    cand = cands.select(["prompt_id", "finish_reason", "judge_scores"]).to_pydict()
    fin, seen = {}, Counter()  # (prompt id, candidate index) -> finish reason; candidates are in sample order
    for pid, f in zip(cand["prompt_id"], cand["finish_reason"]):
        fin[(pid, seen[pid])] = f
        seen[pid] += 1
    metas = [json.loads(m) for m in pairs.column("meta").to_pylist()]
    lists = cand["judge_scores"]
    q = pair_quality(pairs, finish=[fin.get((m["prompt_id"], m[k])) for m in metas
                                    for k in ("chosen_index", "rejected_index")],
                     parse=(sum(len(x) for x in lists), sum(v is None for x in lists for v in x)),
                     parse_what="judgements", repeated=lists)
    sections, figures = generator_card(
        ("Self-rewarding generation", f"{report['pairs']} pairs from {report['input_examples']} prompts; "
         f"{report['candidates']} candidates judged {cfg.judgements}x each by `{judge.model_id}` with an additive "
         f"5-point rubric (Yuan et al. 2024, arXiv 2401.10020). Chosen = best, rejected = worst, margin = score gap. "
         f"All candidates with raw judgements are in the `candidates` side table."),
        pairs, report, sections=[stats], lengths_title="Self-reward: chosen vs rejected length",
        draw=draws_figures(ctx), quality=q)
    # Every candidate's scores, not only the paired ones: named apart from the store card's own
    # "scores" plot (chosen_score vs rejected_score of the pairs), which it would otherwise overwrite.
    if draws_figures(ctx):
        figures["judge_scores"] = histogram_figure({"candidate score (mean)": scores, "single judgement": single},
                                                   "Self-reward: rubric scores of every candidate", "score (0-5)",
                                                   bins=[x / 4 for x in range(21)])
    return StepResult(tables={"train": pairs}, kind="pair", card_sections=sections, figures=figures, report=report,
                      lineage={"description": quality.headline(q),
                               "templates": {"self_reward": TEMPLATE_VERSION, "rubric_judge": pointwise.TEMPLATE_VERSION
                                             + ("+score-first" if cfg.judge_score_first else "")},
                               "judge_model": judge.model_id},
                      side_tables={"candidates": ("completion", cands)})


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
