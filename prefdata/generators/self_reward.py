"""Self-rewarding pairs: the policy answers N times and judges its own answers (Yuan et al. 2024,
arXiv 2401.10020).

A preset of rejection sampling (`rejection.py`, best_of_n with pairing best_vs_worst, one round),
scored by the one judge scorer (`rewards.score.JudgeScorer`, here `judge:` with the paper's defaults).
Per prompt: N candidates (T 0.7, top-p 0.9), each judged k times with the additive 5-point rubric;
a candidate's score is the mean of its parseable judgements. The pair is best vs worst (of tied best
the later sample, of tied worst the earlier); a tie at the top and bottom gives no pair. margin =
score gap. Every candidate, with every raw judgement and parsed score (null when unparseable), is kept
in a candidates side table; degenerate ones are judged too, and never paired.

    from prefdata.generators import self_reward
    pairs, candidates = self_reward.generate(prompts, engine, self_reward.SelfRewardConfig())
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from prefdata import quality
from prefdata.engines import EngineOverrides, overrides_dict
from prefdata.engines.base import Engine
from prefdata.generators import rejection
from prefdata.generators.common import (
    SamplingConfig,
    draws_figures,
    generator_card,
    histogram_figure,
    pair_quality,
    pair_table,
)
from prefdata.rewards import score as scoring
from prefdata.rewards.score import JudgeScorer
from prefdata.schema import CANDIDATE, content_id
from prefdata.steps import StepResult, step

NAME = "self_reward"
TEMPLATE_VERSION = "self-reward-1"
CANDIDATES = CANDIDATE  # the one candidates table (prefdata.schema), also written by rejection sampling
# What self_reward keeps of its own in rejection sampling: its candidate requests' cache key, the tie
# rule above, judging every candidate, and no dedup across prompts (the step is sharded).
PRESET = rejection.Preset(template_version=TEMPLATE_VERSION, later_wins_ties=True, score_filtered=True, dedupe=False)
# The flat keys self_reward YAML has always used, and the judge scorer field each one sets.
FLAT_JUDGE = {"judgements": "k", "judge_temperature": "temperature", "judge_max_tokens": "max_tokens",
              "judge_score_first": "score_first", "judge_engine": "engine"}
# Rejection sampling's drop reasons in self_reward's words (its report's tie_rate counts the ties).
DROP_REASONS = {"no candidate could be scored": "fewer than 2 candidates with a parseable score",
                "fewer than 2 scored candidates": "fewer than 2 candidates with a parseable score",
                "fewer than 2 candidates with different rewards": "tie between best and worst"}


class SelfRewardJudge(JudgeScorer):
    """The judge scorer with the paper's defaults (Yuan et al. 2024): 3 judgements at T 0.7, the score
    after the justification."""

    k: int = Field(3, ge=1, le=16, description="Judgements per candidate, in [1, 16] (the paper: 3); the score is "
                   "the mean of the parseable ones.")
    temperature: float = Field(0.7, ge=0, le=2, description="Judge sampling temperature, in [0, 2]; > 0 so repeated "
                               "judgements differ (their agreement is reported).")
    score_first: bool = Field(False, description="Ask for 'Score: n' first (as an assistant prefix) instead of after "
                              "the justification (the paper's order); far fewer unparseable judgements from small "
                              "models.")


class SelfRewardConfig(SamplingConfig):
    n_candidates: int = Field(4, ge=2, le=64, description="Candidates per prompt, in [2, 64] (Yuan et al. 2024, "
                              "arXiv 2401.10020: N=4).")
    temperature: float = Field(0.7, ge=0, le=2, description="Candidate sampling temperature, in [0, 2] (the paper: 0.7).")
    top_p: float = Field(0.9, gt=0, le=1, description="Candidate nucleus sampling, in (0, 1] (the paper: 0.9).")
    judge: SelfRewardJudge = Field(default_factory=SelfRewardJudge, description="The judge: rejection sampling's "
                                   "judge scorer ({method, k, temperature, max_tokens, score_first, engine}) with the "
                                   "paper's defaults. engine {} (default): the policy judges itself, as in the paper. "
                                   "Or set it with the flat keys below, never both.")
    judgements: int | None = Field(None, ge=1, le=16, exclude=True, description="Flat spelling of judge.k: "
                                   "judgements per candidate, in [1, 16] (the paper: 3).")
    judge_temperature: float | None = Field(None, ge=0, le=2, exclude=True, description="Flat spelling of "
                                            "judge.temperature (default 0.7; > 0 so repeated judgements differ).")
    judge_max_tokens: int | None = Field(None, ge=8, le=4096, exclude=True, description="Flat spelling of "
                                         "judge.max_tokens: new tokens per judgement (default 160); the score line "
                                         "must fit (judge_score_first needs only a few).")
    judge_score_first: bool | None = Field(None, exclude=True, description="Flat spelling of judge.score_first "
                                           "(default false: the justification first, as in the paper).")
    judge_engine: EngineOverrides | None = Field(None, exclude=True, description="Flat spelling of judge.engine: "
                                                 "engine overrides for the judge (e.g. {model: ...}); default: the "
                                                 "policy judges itself, as in the paper.")

    @model_validator(mode="after")
    def _flat_judge_keys(self):
        flat = {k: getattr(self, k) for k in FLAT_JUDGE if getattr(self, k) is not None}
        if flat and "judge" in self.model_fields_set:
            raise ValueError(f"the judge is set twice: by judge: and by {', '.join(flat)}; use one spelling")
        if flat:  # validated already by the flat fields' own ranges
            self.judge = self.judge.model_copy(update={FLAT_JUDGE[k]: v for k, v in flat.items()})
            for k in flat:  # one canonical config: equal to its own dump validated again
                setattr(self, k, None)
        return self

    def rejection(self) -> rejection.RejectionSamplingConfig:
        """This preset as rejection sampling's config: one round of best-of-N, best vs worst, judged."""
        return rejection.RejectionSamplingConfig(mode="best_of_n", output="pairs", pairing="best_vs_worst",
                                                 n_candidates=self.n_candidates, temperature=self.temperature,
                                                 top_p=self.top_p, max_tokens=self.max_tokens, reward=self.judge)


def generate(prompts: pa.Table, engine: Engine, config: SelfRewardConfig | None = None, *, seed: int = 0,
             judge_engine: Engine | None = None, report: dict | None = None) -> tuple[pa.Table, pa.Table]:
    cfg = config or SelfRewardConfig()
    judge_engine = judge_engine or engine
    res = rejection.generate(prompts, engine, cfg.rejection(), seed=seed, engine_for=lambda _overrides: judge_engine,
                             preset=PRESET)
    pairs, cands = _pairs(res.rows, scoring.judge_template(cfg.judge)), _candidates(res.candidates)
    if report is not None:
        report.update(_report(res.report, cands, len(pairs)))
    return pairs, cands


def _pairs(rows: pa.Table, judge_template: str) -> pa.Table:
    """Rejection sampling's pairs with self_reward's source and meta."""
    out = []
    for r in rows.to_pylist():
        m = json.loads(r["meta"])
        out.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                    "source": f"{NAME}/{TEMPLATE_VERSION}+{judge_template}", "chosen_score": r["chosen_score"],
                    "rejected_score": r["rejected_score"], "margin": r["margin"],
                    "meta": {"prompt_id": m["prompt_id"], "chosen_index": m["chosen_sample"],
                             "rejected_index": m["rejected_sample"]}})
    return pair_table(out)


def _candidates(table: pa.Table) -> pa.Table:
    """Rejection sampling's candidates as self_reward's side table: the shared columns, with ids and
    sampling of its one round (no round in the id, no seed offset)."""
    rows = table.select(CANDIDATES.names).to_pylist()
    for c in rows:
        sampling = json.loads(c["sampling"])
        del sampling["seed_offset"]  # 0: one round
        c["sampling"] = json.dumps(sampling)
        c["id"] = content_id(c["prompt_id"], sampling["sample"], c["completion"][0]["content"])
    return pa.Table.from_pylist(rows, schema=CANDIDATES)


def _report(rep: dict, cands: pa.Table, pairs: int) -> dict:
    dropped = Counter()
    for why, count in rep["drop_reasons"].items():
        dropped[DROP_REASONS.get(why, why)] += count
    lists = cands.column("judge_scores").to_pylist()
    scores = [s for ss in lists for s in ss]
    return {"input_examples": rep["input_examples"], "pairs": pairs, "dropped": sum(dropped.values()),
            "drop_reasons": dict(dropped), "candidates": cands.num_rows, "judgements": len(scores),
            "unparseable_rate": round(sum(s is None for s in scores) / max(len(scores), 1), 4),
            "tie_rate": round(dropped["tie between best and worst"] / max(rep["input_examples"], 1), 4),
            "judge_agreement": judge_agreement(lists)}


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
    """Self-rewarding pairs (Yuan et al. 2024): rejection sampling's self-reward preset, with its card."""
    report: dict = {}
    engine = ctx.engine()
    judge = ctx.engine(cfg.judge.engine) if overrides_dict(cfg.judge.engine) else engine
    pairs, cands = generate(table, engine, cfg, seed=ctx.seed, judge_engine=judge, report=report)
    q = _quality(pairs, cands)
    summary = (f"{report['pairs']} pairs from {report['input_examples']} prompts; {report['candidates']} candidates "
               f"judged {cfg.judge.k}x each by `{judge.model_id}` with an additive 5-point rubric (Yuan et al. 2024, "
               "arXiv 2401.10020). Chosen = best, rejected = worst, margin = score gap. All candidates with raw "
               "judgements are in the `candidates` side table.")
    sections, figures = generator_card(("Self-rewarding generation", summary), pairs, report,
                                       sections=[_judge_statistics(cands, report)],
                                       lengths_title="Self-reward: chosen vs rejected length",
                                       draw=draws_figures(ctx), quality=q)
    # Every candidate's scores, not only the paired ones: named apart from the store card's own
    # "scores" plot (chosen_score vs rejected_score of the pairs), which it would otherwise overwrite.
    if draws_figures(ctx):
        scores = [s for s in cands.column("score").to_pylist() if s is not None]
        single = [s for ss in cands.column("judge_scores").to_pylist() for s in ss if s is not None]
        figures["judge_scores"] = histogram_figure({"candidate score (mean)": scores, "single judgement": single},
                                                   "Self-reward: rubric scores of every candidate", "score (0-5)",
                                                   bins=[x / 4 for x in range(21)])
    return StepResult(tables={"train": pairs}, kind="pair", card_sections=sections, figures=figures, report=report,
                      lineage={"description": quality.headline(q),
                               "templates": {"self_reward": TEMPLATE_VERSION,
                                             "rubric_judge": scoring.judge_template(cfg.judge)},
                               "judge_model": judge.model_id},
                      side_tables={"candidates": ("completion", cands)})


def _judge_statistics(cands: pa.Table, report: dict) -> tuple[str, str]:
    single = [s for ss in cands.column("judge_scores").to_pylist() for s in ss if s is not None]
    dist = Counter(round(s) for s in single)
    agree = report["judge_agreement"]
    return ("Judge statistics", "\n".join([
        "| | |", "|---|---|", f"| judgements | {report['judgements']} |",
        f"| unparseable rate | {report['unparseable_rate']:.1%} |",
        f"| tie rate (prompts whose best and worst tie) | {report['tie_rate']:.1%} |",
        f"| exact agreement between repeated judgements | {_fmt(agree['exact_agreement'])} |",
        f"| mean std of repeated judgements | {_fmt(agree['mean_within_std'])} |",
        "| judgement score distribution | " + (", ".join(f"{k}: {v}" for k, v in sorted(dist.items())) or "-") + " |"]))


def _quality(pairs: pa.Table, cands: pa.Table) -> dict:
    """`prefdata.quality` counts: finish reasons of the paired candidates, unparseable judgements, agreement."""
    cand = cands.select(["prompt_id", "finish_reason", "judge_scores"]).to_pydict()
    fin, seen = {}, Counter()  # (prompt id, candidate index) -> finish reason; candidates are in sample order
    for pid, f in zip(cand["prompt_id"], cand["finish_reason"]):
        fin[(pid, seen[pid])] = f
        seen[pid] += 1
    metas = [json.loads(m) for m in pairs.column("meta").to_pylist()]
    lists = cand["judge_scores"]
    return pair_quality(pairs, finish=[fin.get((m["prompt_id"], m[k])) for m in metas
                                       for k in ("chosen_index", "rejected_index")],
                        parse=(sum(len(x) for x in lists), sum(v is None for x in lists for v in x)),
                        parse_what="judgements", repeated=lists)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
