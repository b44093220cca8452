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
from typing import Literal

import pyarrow as pa
from pydantic import Field

from prefdata import quality
from prefdata.engines import EngineOverrides
from prefdata.engines.base import ChatRequest, Engine
from prefdata.generators.common import (
    SamplingConfig,
    clean_output,
    draws_figures,
    generator_card,
    sample_with_retries,
)
from prefdata.judges.pairwise import PairwiseJudge
from prefdata.judges.pointwise import last_user_text
from prefdata.prompts import bpo as tpl
from prefdata.prompts.bpo import REWRITER_INSTRUCTION, REWRITER_TEMPLATE_VERSION
from prefdata.schema import MESSAGES, content_id
from prefdata.steps import StepResult, step

TEMPLATE_VERSION = tpl.TEMPLATE_VERSION

_COMP = re.compile(r"<comparison>(.*?)</comparison>", re.DOTALL | re.IGNORECASE)
_OPT = re.compile(r"<optimized>(.*?)</optimized>", re.DOTALL | re.IGNORECASE)
# Template debris that means the model did not finish cleanly (the paper drops such outputs).
_LEFTOVER = re.compile(r"</?(comparison|optimized|end|response)>|\[/?(INST|END)\]|<\|[a-z_]+\|>|</s>", re.IGNORECASE)


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


class ConstructConfig(SamplingConfig):
    format: Literal["tagged", "two_step"] = Field(
        "tagged", description="tagged: one call answering in <comparison>/<optimized> tags, as in BPO (Cheng et al. "
        "2023, arXiv 2311.04155, Sec. 3.1); two_step: the comparison and the instruction are asked for separately, "
        "for engines that cannot keep a tagged format.")
    max_tokens: int = Field(256, ge=16, le=4096, description="New tokens per call; the tagged answer needs room "
                            "for both parts.")
    max_retries: int = Field(2, ge=0, le=10, description="Re-sample an unparseable or degenerate answer this many "
                             "times, then drop the pair with the reason.")


# The BPO data table: one row per (original, optimized) prompt. `prompt` holds the original as
# messages so the prompt readers and `trainers.sft` treat it like any prompt column.
BPO_ROWS = pa.schema([("id", pa.string()), ("prompt", MESSAGES), ("optimized_prompt", pa.string()),
                      ("comparison", pa.string()), ("raw", pa.string()), ("source", pa.string()),
                      ("meta", pa.string())])


def construct(pairs: pa.Table, engine: Engine, config: ConstructConfig | None = None, *, seed: int = 0,
              report: dict | None = None) -> pa.Table:
    cfg = config or ConstructConfig()
    # Only the last user turn is rewritten: BPO optimizes single instructions (multi-turn HH
    # prefixes contribute their final request; meta.turns records how many there were).
    rows = pairs.select([c for c in ("id", "prompt", "chosen", "rejected", "source") if c in pairs.column_names]).to_pylist()
    reqs = [ChatRequest(messages=[{"role": "user", "content": tpl.CONSTRUCT_PROMPT.format(
        instruction=last_user_text(r["prompt"]), good=r["chosen"][-1]["content"], bad=r["rejected"][-1]["content"])}],
        template_version=TEMPLATE_VERSION) for r in rows]
    ok: dict[str, tuple[str, str]] = {}
    outputs = Counter()  # tagged answers checked (retries included) and those that did not parse

    def check(text: str) -> str | None:
        comp, opt, why = parse_construct(text)
        outputs["checked"] += 1
        if why is None:
            ok[text] = (comp, opt)
        else:
            outputs["unparseable"] += 1
        return why

    params = cfg.sampling(seed)
    finish: list = []
    if cfg.format == "two_step":
        texts, reasons = _two_step(rows, engine, params, cfg.max_retries, ok, finish)
    else:
        texts, reasons, _ = sample_with_retries(engine, reqs, params, cfg.max_retries, check=check,
                                                post=lambda t: t.strip(), finish=finish)
    out, dropped = [], Counter()
    for r, t, why, fin in zip(rows, texts, reasons, finish):
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
                    "optimized_prompt": opt, "comparison": comp, "raw": t, "source": r.get("source"),
                    "meta": json.dumps({"pair_id": r["id"], "template": TEMPLATE_VERSION, "format": cfg.format,
                                        "turns": sum(m["role"] == "user" for m in r["prompt"]), "finish_reason": fin})})
    if report is not None:
        report.update({"input_examples": len(rows), "rows": len(out), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped)})
        if cfg.format == "tagged":  # two_step answers are plain text: nothing to parse
            report["tagged_outputs"] = {"checked": outputs["checked"], "unparseable": outputs["unparseable"]}
    return pa.Table.from_pylist(out, schema=BPO_ROWS)


def _two_step(rows, engine, params, max_retries, ok, finish):
    """Comparison, then the optimized instruction; returns texts keyed into `ok` like the tagged path,
    and fills `finish` with the optimized instruction's finish reason per row."""
    args = [dict(instruction=last_user_text(r["prompt"]), good=r["chosen"][-1]["content"], bad=r["rejected"][-1]["content"])
            for r in rows]
    comps, why_c, _ = sample_with_retries(engine, [ChatRequest(messages=[{"role": "user", "content": tpl.COMPARE_PROMPT.format(**a)}],
                                                               template_version=TEMPLATE_VERSION + "+compare") for a in args],
                                          params, max_retries)
    todo = [i for i, c in enumerate(comps) if c is not None]
    fin_o: list = []
    opts, why_o, _ = sample_with_retries(engine, [ChatRequest(messages=[{"role": "user", "content": tpl.OPTIMIZE_PROMPT.format(
        instruction=args[i]["instruction"], comparison=comps[i])}], template_version=TEMPLATE_VERSION + "+optimize")
        for i in todo], params, max_retries, finish=fin_o)
    texts, reasons = [None] * len(rows), [f"comparison {w}" if w else None for w in why_c]
    finish[:] = [None] * len(rows)
    for i, o, w, f in zip(todo, opts, why_o, fin_o):
        finish[i] = f
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


class RewriteConfig(SamplingConfig):
    rewriter_model: str | None = Field(None, description="A trained rewriter: any causal LM (local dir or hub id), "
                                       "run by the transformers engine under the BPO instruction template "
                                       "(`prefdata train sft --set target=optimized_prompt` trains one). Default: "
                                       "zero-shot with the pipeline's engine and the same template.")
    temperature: float = Field(0.6, ge=0, le=2, description="The paper samples the optimizer at T 0.6 (arXiv "
                               "2311.04155), in [0, 2].")
    top_p: float = Field(0.9, gt=0, le=1, description="The paper: top-p 0.9, in (0, 1].")
    max_tokens: int = Field(192, ge=8, le=4096, description="New tokens for the optimized prompt.")
    max_retries: int = Field(2, ge=0, le=10, description="Re-sample an empty or degenerate rewrite this many "
                             "times, then drop the prompt with the reason.")


REWRITE_ROWS = pa.schema([("id", pa.string()), ("prompt", MESSAGES), ("optimized_prompt", pa.string()),
                          ("meta", pa.string())])


def rewrite(prompts: pa.Table, engine: Engine, config: RewriteConfig | None = None, *, seed: int = 0,
            report: dict | None = None) -> pa.Table:
    """(id, prompt, optimized_prompt, meta) for each prompt whose rewrite passed the filters."""
    cfg = config or RewriteConfig()
    rows = prompts.select(["id", "prompt"]).to_pylist()
    reqs = [ChatRequest(messages=[{"role": "user", "content": REWRITER_INSTRUCTION.format(prompt=last_user_text(r["prompt"]))}],
                        template_version=REWRITER_TEMPLATE_VERSION, request_id=r["id"]) for r in rows]
    finish: list = []
    texts, reasons, _ = sample_with_retries(engine, reqs, cfg.sampling(seed), cfg.max_retries, finish=finish)
    out, dropped = [], Counter()
    for r, t, why, fin in zip(rows, texts, reasons, finish):
        # The same length-ratio filter as construction: a rewrite that lost or swamped the request is
        # not that request any more.
        lf = length_filter(last_user_text(r["prompt"]), t) if t is not None else None
        if t is None or lf or _LEFTOVER.search(t):
            dropped[lf or (f"rewrite {why}" if t is None else "leftover markers in the rewrite")] += 1
            continue
        out.append({"id": r["id"], "prompt": r["prompt"], "optimized_prompt": t,
                    "meta": json.dumps({"rewriter": cfg.rewriter_model or "zero-shot", "template": REWRITER_TEMPLATE_VERSION,
                                        "finish_reason": fin})})
    if report is not None:
        report.update({"input_examples": len(rows), "rows": len(out), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped)})
    return pa.Table.from_pylist(out, schema=REWRITE_ROWS)


class EvaluateConfig(SamplingConfig):
    target_engine: EngineOverrides | None = Field(None, description="Engine overrides for the target model that answers both "
                                       "prompts (BPO is black-box: the target never changes); default: the pipeline's.")
    judge_engine: EngineOverrides | None = Field(None, description="Engine overrides for the pairwise judge; default: the pipeline's.")
    judge_method: Literal["generate", "logprob"] = Field(
        "generate", description="generate: the judge writes 'Winner: A|B|tie' (any engine); logprob: ' A' vs ' B' "
        "log-likelihood after 'Winner:' (transformers/vllm). Both orders are always judged.")
    max_tokens: int = Field(128, ge=8, le=4096, description="New tokens per answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="Answer temperature, in [0, 2]; greedy (0) isolates the "
                               "prompt's effect.")
    top_p: float = Field(1.0, gt=0, le=1, description="Answer nucleus sampling, in (0, 1]; only matters when "
                         "temperature > 0.")
    judge_max_tokens: int = Field(128, ge=4, le=4096, description="New tokens per judgement (generate method).")


def evaluate(rows: pa.Table, target: Engine, judge_engine: Engine, config: EvaluateConfig | None = None, *,
             seed: int = 0) -> tuple[pa.Table, dict]:
    """Answer original and optimized prompts with `target`; a position-swapped judge compares the
    answers. Returns the per-prompt table and {win, tie, loss, n} for the optimized prompt."""
    cfg = config or EvaluateConfig()
    data = rows.select(["id", "prompt", "optimized_prompt"]).to_pylist()
    params = cfg.sampling(seed)
    orig = target.generate([ChatRequest(messages=r["prompt"], request_id=r["id"]) for r in data], params)
    opt = target.generate([ChatRequest(messages=[{"role": "user", "content": r["optimized_prompt"]}], request_id=r["id"])
                           for r in data], params)
    a_orig, a_opt = [clean_output(o[0].text) for o in orig], [clean_output(o[0].text) for o in opt]
    # The judge sees the original request for both answers: the question is which answer serves the
    # user's actual request better.
    judge = PairwiseJudge(method=cfg.judge_method, max_tokens=cfg.judge_max_tokens)
    verdicts, raw_ab, raw_ba = judge.judge(judge_engine, [r["prompt"] for r in data], a_opt, a_orig, seed=seed)
    n = len(verdicts)
    stats = {"win": sum(v == 1.0 for v in verdicts) / n if n else 0.0,
             "tie": sum(v is None for v in verdicts) / n if n else 0.0,
             "loss": sum(v == 0.0 for v in verdicts) / n if n else 0.0, "n": n}
    table = pa.table({"id": pa.array([r["id"] for r in data], pa.string()),
                      "prompt": pa.array([r["prompt"] for r in data], MESSAGES),
                      "optimized_prompt": pa.array([r["optimized_prompt"] for r in data], pa.string()),
                      "answer_original": pa.array(a_orig, pa.string()), "answer_optimized": pa.array(a_opt, pa.string()),
                      "finish_original": pa.array([o[0].finish_reason for o in orig], pa.string()),
                      "finish_optimized": pa.array([o[0].finish_reason for o in opt], pa.string()),
                      "optimized_wins": pa.array(verdicts, pa.float64()),
                      "judge_raw_ab": pa.array(raw_ab, pa.string()), "judge_raw_ba": pa.array(raw_ba, pa.string())})
    return table, stats


# ----------------------------------------------------------------------------- pipeline steps


def _bpo_examples(table: pa.Table, k: int = 3) -> str:
    return "\n\n".join(f"- **original:** {last_user_text(r['prompt'])[:200]}\n  **optimized:** {r['optimized_prompt'][:300]}"
                        for r in table.slice(0, k).to_pylist()) or "(no rows)"


def _ratio_figure(table: pa.Table, title: str):
    """log2(optimized words / original words), with the paper's filter bounds (1/2 and 6) marked."""
    import math

    from prefdata.generators.common import histogram_figure

    ratios = [math.log2(max(len(o.split()), 1) / max(len(last_user_text(p).split()), 1))
              for p, o in zip(table.column("prompt").to_pylist(), table.column("optimized_prompt").to_pylist())]
    fig = histogram_figure({"prompts": ratios}, title, "log2(optimized / original length in words)")
    for bound in (-1.0, math.log2(6)):
        fig.axes[0].axvline(bound, color="grey", linestyle="--")
    return fig


def _rewrite_quality(table: pa.Table, parse: dict | None = None) -> dict:
    """Quality counts of (original, optimized prompt) rows: optimized vs original, finish reasons
    from meta, and the tagged answers that did not parse (construct, tagged format)."""
    cols = table.select(["prompt", "optimized_prompt", "meta"]).to_pydict()
    return quality.measure(cols["optimized_prompt"], [last_user_text(p) for p in cols["prompt"]], kind="rewrite",
                           finish=[json.loads(m).get("finish_reason") for m in cols["meta"]],
                           parse=(parse["checked"], parse["unparseable"]) if parse else None,
                           parse_what="tagged answers")


@step("bpo_construct", config=ConstructConfig, input="pair", output="bpo")
def _step_construct(cfg: ConstructConfig, table: pa.Table, ctx):
    from prefdata.schema import conform

    report: dict = {}
    out = construct(conform(table, "pair"), ctx.engine(), cfg, seed=ctx.seed, report=report)
    q = _rewrite_quality(out, report.get("tagged_outputs"))
    sections, figures = generator_card(
        ("BPO construction", f"{report['rows']} optimized instructions from {report['input_examples']} preference "
         f"pairs ({cfg.format} prompts; Cheng et al. 2023, arXiv 2311.04155). Filters: orig/opt > 2 or opt/orig > 6 "
         "words, leftover markers. Rows: (prompt, optimized_prompt, comparison, raw); the source column keeps "
         "the pair set each came from."), out, report, examples=_bpo_examples(out),
        quality=q)
    if len(out) and draws_figures(ctx):
        figures["length_ratio"] = _ratio_figure(out, "BPO construction: length ratio")
    return StepResult(tables={"train": out}, kind="bpo", report=report, card_sections=sections, figures=figures,
                      lineage={"description": quality.headline(q),
                               "templates": {"bpo_construct": TEMPLATE_VERSION + ("+two-step" if cfg.format == "two_step" else "")}})


@step("bpo_rewrite", config=RewriteConfig, input="prompt", output="bpo")
def _step_rewrite(cfg: RewriteConfig, table: pa.Table, ctx):

    report: dict = {}
    # A trained rewriter is a plain causal LM on local weights: always the transformers engine,
    # whatever backend the rest of the pipeline uses.
    engine = ctx.engine({"backend": "transformers", "model": cfg.rewriter_model}) if cfg.rewriter_model else ctx.engine()
    out = rewrite(table, engine, cfg, seed=ctx.seed, report=report)
    q = _rewrite_quality(out)
    sections, figures = generator_card(
        ("BPO rewriting", f"{report['rows']} of {report['input_examples']} prompts rewritten by "
         f"{'`' + engine.model_id + '` (trained rewriter)' if cfg.rewriter_model else 'the zero-shot template on `' + engine.model_id + '`'} "
         f"at T {cfg.temperature}, top-p {cfg.top_p}."), out, report, examples=_bpo_examples(out),
        quality=q)
    if len(out) and draws_figures(ctx):
        figures["length_ratio"] = _ratio_figure(out, "BPO rewrite: length ratio")
    return StepResult(tables={"train": out}, kind="bpo", report=report, card_sections=sections, figures=figures,
                      lineage={"description": quality.headline(q), "templates": {"bpo_rewriter": REWRITER_TEMPLATE_VERSION},
                               "rewriter_model": engine.model_id})


@step("bpo_evaluate", config=EvaluateConfig, input="bpo", output="bpo_eval")
def _step_evaluate(cfg: EvaluateConfig, table: pa.Table, ctx):

    target = ctx.engine(cfg.target_engine)
    judge = ctx.engine(cfg.judge_engine)
    out, stats = evaluate(table, target, judge, cfg, seed=ctx.seed)
    md = ("| optimized vs original | rate |\n|---|---|\n" + f"| win | {stats['win']:.1%} |\n| tie | {stats['tie']:.1%} |\n"
          f"| loss | {stats['loss']:.1%} |\n\n{stats['n']} prompts answered by `{target.model_id}`, judged by "
          f"`{judge.model_id}` ({cfg.judge_method}) in both orders; ties include verdicts that flipped with the order.")
    ex = "\n\n".join(f"- **original:** {last_user_text(r['prompt'])[:150]}\n  **optimized:** {r['optimized_prompt'][:150]}\n"
                      f"  **verdict:** {'optimized wins' if r['optimized_wins'] == 1.0 else 'original wins' if r['optimized_wins'] == 0.0 else 'tie'}"
                      for r in out.slice(0, 3).to_pylist()) or "(no rows)"
    cols = out.select(["answer_optimized", "answer_original", "finish_optimized", "finish_original",
                       "optimized_wins", "judge_raw_ab", "judge_raw_ba"]).to_pydict()
    q = quality.measure(cols["answer_optimized"], cols["answer_original"], kind="answers",
                        finish=cols["finish_optimized"] + cols["finish_original"], label_prob=cols["optimized_wins"],
                        parse_what="judge verdicts",
                        **quality.pairwise_judgements(cols["judge_raw_ab"], cols["judge_raw_ba"]))
    sections, _ = generator_card(("BPO evaluation (pairwise, position-swapped)", md), out, stats, examples=ex,
                                 quality=q)
    return StepResult(tables={"train": out}, kind="bpo_eval", report=stats, card_sections=sections,
                      lineage={"description": quality.headline(q), "templates": {"pairwise_judge": PairwiseJudge(method=cfg.judge_method).template_version},
                               "target": target.model_id, "judge": judge.model_id})
