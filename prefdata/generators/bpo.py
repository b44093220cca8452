"""BPO: black-box prompt optimization (Cheng et al. 2023, arXiv 2311.04155). Three steps:

- `bpo_construct`: from preference pairs, an LLM compares the good and the bad reply and writes an
  optimized instruction; the comparison and the instruction are parsed from tagged output, then the
  paper's length-ratio filters apply. Rows: (original prompt, optimized prompt, comparison, raw).
- `bpo_rewrite`: rewrite a prompt set, zero-shot with our template, or with a trained rewriter model
  (any causal LM; `trainers.sft` with `target=optimized_prompt` trains one) at top-p 0.9, T 0.6.
- `bpo_evaluate`: answer original and optimized prompts with the same target engine, judge the two
  answers pairwise with swapped order, and report win/tie/loss rates.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.base import ChatRequest, Engine, SamplingParams
from prefdata.generators.common import clean_output, drop_reasons_markdown, sample_with_retries
from prefdata.judges.pairwise import PairwiseJudge
from prefdata.judges.pointwise import last_user_text
from prefdata.prompts.bpo import REWRITER_INSTRUCTION, REWRITER_TEMPLATE_VERSION
from prefdata.schema import content_id

TEMPLATE_VERSION = "bpo-construct-1"
# What both construction prompts show: the instruction and the judged pair.
PAIR_CONTEXT = """An instruction was given to an assistant. One reply was judged good and one bad.

Instruction:
{instruction}

Good reply:
{good}

Bad reply:
{bad}

"""
CONSTRUCT_PROMPT = PAIR_CONTEXT + """First compare the two replies on correctness, helpfulness and harmlessness. Then rewrite the instruction so that an assistant would be more likely to give a reply like the good one. The new instruction must keep all of the original information and intent, must not copy details from the good reply, and must not answer the instruction itself.
Use exactly this format:
<comparison>your comparison</comparison>
<optimized>the rewritten instruction</optimized>
<end>"""


# Two-call variant for engines that cannot keep the tagged format (a 135M model cannot): the
# comparison and the rewritten instruction are asked for separately, each as plain text.
COMPARE_PROMPT = PAIR_CONTEXT + """In two or three sentences, compare the two replies on correctness, helpfulness and harmlessness."""
OPTIMIZE_PROMPT = """Instruction:
{instruction}

A comparison of a good and a bad answer to it:
{comparison}

Rewrite the instruction so that an assistant would answer it like the good reply. Keep all of its information and intent, add no details from the answers, and do not answer it. Write only the rewritten instruction."""

_COMP = re.compile(r"<comparison>(.*?)</comparison>", re.DOTALL | re.IGNORECASE)
_OPT = re.compile(r"<optimized>(.*?)</optimized>", re.DOTALL | re.IGNORECASE)
_LEFTOVER = re.compile(r"</?(comparison|optimized|end)>|\[/?INST\]|<\|im_(start|end)\|>", re.IGNORECASE)


def parse_construct(text: str) -> tuple[str | None, str | None, str | None]:
    """(comparison, optimized, None) or (None, None, reason)."""
    c, o = _COMP.search(text or ""), _OPT.search(text or "")
    if not c or not o:
        return None, None, "unparseable (missing <comparison> or <optimized>)"
    comp, opt = c.group(1).strip(), o.group(1).strip()
    if not opt:
        return None, None, "empty optimized instruction"
    if _LEFTOVER.search(opt):
        return None, None, "leftover markers in the optimized instruction"
    return comp, opt, None


def length_filter(original: str, optimized: str) -> str | None:
    """The paper's filters, in words: drop if orig/opt > 2 or opt/orig > 6."""
    lo, lp = max(len(original.split()), 1), max(len(optimized.split()), 1)
    if lo / lp > 2:
        return "optimized prompt too short (orig/opt > 2)"
    if lp / lo > 6:
        return "optimized prompt too long (opt/orig > 6)"
    return None


class ConstructConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field("tagged", pattern="^(tagged|two_step)$", description="tagged: one call with <comparison>/"
                        "<optimized> output (as in BPO); two_step: comparison and instruction asked separately, "
                        "for engines that cannot keep a tagged format.")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(256, ge=16)
    max_retries: int = Field(2, ge=0, le=10)


def construct(pairs: pa.Table, engine: Engine, config: ConstructConfig | None = None, *, seed: int = 0,
              report: dict | None = None) -> pa.Table:
    cfg = config or ConstructConfig()
    rows = pairs.select(["id", "prompt", "chosen", "rejected"]).to_pylist()
    reqs = [ChatRequest(messages=[{"role": "user", "content": CONSTRUCT_PROMPT.format(
        instruction=last_user_text(r["prompt"]), good=r["chosen"][-1]["content"], bad=r["rejected"][-1]["content"])}],
        template_version=TEMPLATE_VERSION) for r in rows]
    ok: dict[str, tuple[str, str]] = {}

    def check(text: str) -> str | None:
        comp, opt, why = parse_construct(text)
        if why is None:
            ok[text] = (comp, opt)
        return why

    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
    if cfg.format == "two_step":
        texts, reasons = _two_step(rows, engine, params, cfg.max_retries, ok)
    else:
        texts, reasons, _ = sample_with_retries(engine, reqs, params, cfg.max_retries, check=check,
                                                post=lambda t: t.strip())
    out, dropped = [], Counter()
    for r, t, why in zip(rows, texts, reasons):
        if t is None:
            dropped[why or "unparseable"] += 1
            continue
        comp, opt = ok[t]
        orig = last_user_text(r["prompt"])
        lf = length_filter(orig, opt)
        if lf:
            dropped[lf] += 1
            continue
        out.append({"id": content_id(orig, opt), "prompt": [{"role": "user", "content": orig}],
                    "optimized_prompt": opt, "comparison": comp, "raw": t,
                    "meta": json.dumps({"pair_id": r["id"], "template": TEMPLATE_VERSION})})
    if report is not None:
        report.update({"input_examples": len(rows), "rows": len(out), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped)})
    return pa.Table.from_pylist(out) if out else pa.table({"id": [], "prompt": [], "optimized_prompt": [],
                                                          "comparison": [], "raw": [], "meta": []})


def _two_step(rows, engine, params, max_retries, ok):
    """Comparison, then the optimized instruction; returns texts keyed into `ok` like the tagged path."""
    args = [dict(instruction=last_user_text(r["prompt"]), good=r["chosen"][-1]["content"], bad=r["rejected"][-1]["content"])
            for r in rows]
    comps, why_c, _ = sample_with_retries(engine, [ChatRequest(messages=[{"role": "user", "content": COMPARE_PROMPT.format(**a)}],
                                                               template_version=TEMPLATE_VERSION + "+compare") for a in args],
                                          params, max_retries)
    todo = [i for i, c in enumerate(comps) if c is not None]
    opts, why_o, _ = sample_with_retries(engine, [ChatRequest(messages=[{"role": "user", "content": OPTIMIZE_PROMPT.format(
        instruction=args[i]["instruction"], comparison=comps[i])}], template_version=TEMPLATE_VERSION + "+optimize")
        for i in todo], params, max_retries)
    texts, reasons = [None] * len(rows), [f"comparison {w}" if w else None for w in why_c]
    for i, o, w in zip(todo, opts, why_o):
        if o is None:
            reasons[i] = f"optimized instruction {w}"
            continue
        raw = f"<comparison>{comps[i]}</comparison>\n<optimized>{o}</optimized>\n<end>"
        comp, opt, why = parse_construct(raw)
        if why:
            reasons[i] = why
            continue
        ok[raw] = (comp, opt)
        texts[i] = raw
    return texts, reasons


class RewriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rewriter_model: str | None = Field(None, description="A trained rewriter (any causal LM path/id); default: "
                                       "zero-shot with the pipeline's engine.")
    temperature: float = Field(0.6, ge=0, le=2, description="The paper samples the optimizer at T 0.6, top-p 0.9.")
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(192, ge=8)
    max_retries: int = Field(2, ge=0, le=10)


def rewrite(prompts: pa.Table, engine: Engine, config: RewriteConfig | None = None, *, seed: int = 0,
            report: dict | None = None) -> pa.Table:
    cfg = config or RewriteConfig()
    rows = prompts.select(["id", "prompt"]).to_pylist()
    reqs = [ChatRequest(messages=[{"role": "user", "content": REWRITER_INSTRUCTION.format(prompt=last_user_text(r["prompt"]))}],
                        template_version=REWRITER_TEMPLATE_VERSION) for r in rows]
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
    texts, reasons, _ = sample_with_retries(engine, reqs, params, cfg.max_retries)
    out, dropped = [], Counter()
    for r, t, why in zip(rows, texts, reasons):
        orig = last_user_text(r["prompt"])
        lf = length_filter(orig, t) if t else None
        if t is None or lf:
            dropped[lf or why or "empty"] += 1
            continue
        out.append({"id": r["id"], "prompt": r["prompt"], "optimized_prompt": clean_output(t),
                    "meta": json.dumps({"rewriter": cfg.rewriter_model or "zero-shot", "template": REWRITER_TEMPLATE_VERSION})})
    if report is not None:
        report.update({"input_examples": len(rows), "rows": len(out), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped)})
    return pa.Table.from_pylist(out) if out else pa.table({"id": [], "prompt": [], "optimized_prompt": [], "meta": []})


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_engine: dict | None = Field(None, description="Engine answering both prompts; default: the pipeline's.")
    judge_engine: dict | None = Field(None, description="Pairwise judge engine; default: the pipeline's.")
    max_tokens: int = Field(128, ge=8)
    temperature: float = Field(0.0, ge=0, le=2, description="Greedy answers isolate the prompt's effect.")


def evaluate(rows: pa.Table, target: Engine, judge_engine: Engine, config: EvaluateConfig | None = None, *,
             seed: int = 0) -> tuple[pa.Table, dict]:
    cfg = config or EvaluateConfig()
    data = rows.select(["id", "prompt", "optimized_prompt"]).to_pylist()
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
    orig = target.generate([ChatRequest(messages=r["prompt"]) for r in data], params)
    opt = target.generate([ChatRequest(messages=[{"role": "user", "content": r["optimized_prompt"]}]) for r in data], params)
    a_orig, a_opt = [o[0].text for o in orig], [o[0].text for o in opt]
    verdicts, raw_ab, raw_ba = PairwiseJudge().judge(judge_engine, [r["prompt"] for r in data], a_opt, a_orig, seed=seed)
    n = max(len(verdicts), 1)
    stats = {"win": sum(v == 1.0 for v in verdicts) / n, "tie": sum(v is None for v in verdicts) / n,
             "loss": sum(v == 0.0 for v in verdicts) / n, "n": len(verdicts)}
    table = pa.table({"id": [r["id"] for r in data], "prompt": [r["prompt"] for r in data],
                      "optimized_prompt": [r["optimized_prompt"] for r in data], "answer_original": a_orig,
                      "answer_optimized": a_opt, "optimized_wins": verdicts, "judge_raw_ab": raw_ab, "judge_raw_ba": raw_ba})
    return table, stats


def _step_construct(cfg: ConstructConfig, table: pa.Table, ctx):
    from prefdata.pipeline import StepResult
    from prefdata.schema import conform

    report: dict = {}
    out = construct(conform(table, "pair"), ctx.engine(), cfg, seed=ctx.seed, report=report)
    ex = "\n\n".join(f"- **original:** {r['prompt'][0]['content'][:200]}\n  **optimized:** {r['optimized_prompt'][:300]}"
                     for r in out.slice(0, 3).to_pylist()) or "(no rows)"
    return StepResult(tables={"train": out}, kind="bpo", report=report,
                      card_sections=[("BPO construction", f"{report['rows']} optimized instructions from "
                                      f"{report['input_examples']} pairs (Cheng et al. 2023, arXiv 2311.04155)."),
                                     ("Drop reasons", drop_reasons_markdown(report["drop_reasons"])), ("Examples", ex)],
                      lineage={"templates": {"bpo_construct": TEMPLATE_VERSION}})


def _step_rewrite(cfg: RewriteConfig, table: pa.Table, ctx):
    from prefdata.pipeline import StepResult

    report: dict = {}
    engine = ctx.engine({"model": cfg.rewriter_model}) if cfg.rewriter_model else ctx.engine()
    out = rewrite(table, engine, cfg, seed=ctx.seed, report=report)
    return StepResult(tables={"train": out}, kind="bpo", report=report,
                      card_sections=[("BPO rewriting", f"{report['rows']} of {report['input_examples']} prompts rewritten "
                                      f"by {cfg.rewriter_model or 'the zero-shot template'}."),
                                     ("Drop reasons", drop_reasons_markdown(report["drop_reasons"]))],
                      lineage={"templates": {"bpo_rewriter": REWRITER_TEMPLATE_VERSION}})


def _step_evaluate(cfg: EvaluateConfig, table: pa.Table, ctx):
    from prefdata.pipeline import StepResult

    target = ctx.engine(cfg.target_engine)
    judge = ctx.engine(cfg.judge_engine)
    out, stats = evaluate(table, target, judge, cfg, seed=ctx.seed)
    md = ("| optimized vs original | rate |\n|---|---|\n" + f"| win | {stats['win']:.1%} |\n| tie | {stats['tie']:.1%} |\n"
          f"| loss | {stats['loss']:.1%} |\n\n{stats['n']} prompts; ties include verdicts that flipped with the order.")
    return StepResult(tables={"train": out}, kind="bpo_eval", report=stats,
                      card_sections=[("BPO evaluation (pairwise, position-swapped)", md)],
                      lineage={"templates": {"pairwise_judge": "pairwise-judge-1"}, "target": target.model_id,
                               "judge": judge.model_id})


def register() -> None:
    from prefdata.pipeline import register_step

    register_step("bpo_construct", ConstructConfig, _step_construct)
    register_step("bpo_rewrite", RewriteConfig, _step_rewrite)
    register_step("bpo_evaluate", EvaluateConfig, _step_evaluate)
