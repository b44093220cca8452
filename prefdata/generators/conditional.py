"""Preference-conditional multi-aspect synthesis (RMBoost: Shen et al. 2024, arXiv 2407.16008).

1. Generate y1 for the prompt.  2. Draw a direction, better or worse, per example (seeded).
3. Ask the model to edit y1 into y2 that is better/worse on a few aspects of a guideline, naming
   the aspects it changed in tagged output.  4. Label by construction: better -> y2 chosen, worse ->
   y1 chosen. Output that cannot be parsed is dropped with a reason, never guessed.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from prefdata import quality
from prefdata.engines.base import ChatRequest, Engine
from prefdata.generators.common import (
    SamplingConfig,
    assistant,
    clean_output,
    degenerate_reason,
    draws_figures,
    generator_card,
    pair_quality,
    pair_table,
    sample_with_retries,
)
from prefdata.judges.pointwise import last_user_text
from prefdata.prompts import conditional as tpl
from prefdata.steps import StepResult, step

NAME = "conditional"
TEMPLATE_VERSION = tpl.TEMPLATE_VERSION
GUIDELINES = tpl.GUIDELINES

_ASPECTS = re.compile(r"<aspects>(.*?)</aspects>", re.DOTALL | re.IGNORECASE)
# The closing tag is required: an edit cut off at max_tokens is not the edit the model meant.
_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL | re.IGNORECASE)
_SPLIT = re.compile(r",|;|\band\b")


class ConditionalConfig(SamplingConfig):
    guideline: str = Field("chat", description="Aspect guideline: 'chat' (helpfulness, relevance, completeness, "
                           "honesty, harmlessness) or 'summarization' (coherence, accuracy, coverage), as in RMBoost "
                           "(arXiv 2407.16008, Sec. 3), or a key of `guidelines`.")
    guidelines: dict[str, list[str]] = Field(default_factory=dict, description="Your own guidelines: "
                                             "{name: [aspect, ...]}; a shipped name is replaced.")
    p_better: float = Field(0.5, ge=0, le=1, description="Probability in [0, 1] of drawing the 'better' direction "
                            "per example (RMBoost draws the direction uniformly).")
    aspect_choice: Literal["model", "seeded"] = Field(
        "model", description="model: the editor picks 1-3 aspects and names them in <aspects> tags (RMBoost); "
        "seeded: 1-3 aspects are drawn per example and named in the prompt, for engines that cannot keep tags.")
    max_tokens: int = Field(160, ge=8, le=4096, description="New tokens for y1 and for the edit (tags included).")
    max_retries: int = Field(2, ge=0, le=10, description="Re-sample a degenerate y1 or an unparseable edit this many "
                             "times, then drop the example with the reason.")

    @model_validator(mode="after")
    def _guidelines_nonempty(self):
        for name, aspects in self.guidelines.items():
            if not aspects or not all(isinstance(a, str) and a.strip() for a in aspects):
                raise ValueError(f"guidelines.{name} must be a non-empty list of aspect names")
        return self


def guideline_version(cfg: ConditionalConfig) -> str:
    """The shipped version, or 'custom' when the chosen guideline comes from the YAML."""
    return "custom" if cfg.guideline in cfg.guidelines else tpl.GUIDELINES_VERSION


def direction(example_id: str, seed: int, p_better: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:dir:{example_id}".encode()).digest()[:8], "big") / 2**64
    return "better" if u < p_better else "worse"


def seeded_aspects(example_id: str, seed: int, aspects: list[str]) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:aspects:{example_id}".encode()).digest()[:8], "big"))
    k = int(rng.integers(1, min(3, len(aspects)) + 1))
    return sorted(rng.choice(aspects, size=k, replace=False).tolist(), key=aspects.index)


def parse_edit(text: str, allowed: list[str]) -> tuple[list[str] | None, str | None, str | None]:
    """(aspects, response, None) or (None, None, reason)."""
    a, r = _ASPECTS.search(text or ""), _RESPONSE.search(text or "")
    if not a or not r:
        return None, None, "unparseable edit (missing <aspects>…</aspects> or <response>…</response>)"
    names = {x.lower(): x for x in allowed}
    aspects = [names[x.strip().lower()] for x in _SPLIT.split(a.group(1)) if x.strip().lower() in names]
    if not aspects:
        return None, None, "edit names no aspect from the guideline"
    resp = r.group(1).strip()
    if degenerate_reason(resp):
        return None, None, f"edited response {degenerate_reason(resp)}"
    return aspects, resp, None


def generate(prompts: pa.Table, engine: Engine, config: ConditionalConfig | None = None, *, seed: int = 0,
             report: dict | None = None) -> pa.Table:
    cfg = config or ConditionalConfig()
    guides = {**GUIDELINES, **cfg.guidelines}
    if cfg.guideline not in guides:
        from prefdata.errors import ConfigError

        raise ConfigError(f"guideline '{cfg.guideline}' not found (have: {', '.join(guides)})")
    aspects = guides[cfg.guideline]
    g_version = guideline_version(cfg)
    rows = prompts.select(["id", "prompt"]).to_pylist()
    params = cfg.sampling(seed)  # for y1 and for the edit
    fin1: list = []
    y1s, why1, _ = sample_with_retries(engine, [ChatRequest(messages=r["prompt"], template_version=TEMPLATE_VERSION)
                                                for r in rows], params, cfg.max_retries, finish=fin1)
    dropped, todo = Counter(), []
    for r, y1, w, f in zip(rows, y1s, why1, fin1):
        if y1 is None:
            dropped[f"first reply {w}"] += 1
        else:
            todo.append((r, y1, direction(r["id"], seed, cfg.p_better), f))
    seeded = cfg.aspect_choice == "seeded"
    picked = {r["id"]: seeded_aspects(r["id"], seed, aspects) for r, _, _, _ in todo} if seeded else {}
    edit_reqs = [ChatRequest(messages=[{"role": "user", "content": (tpl.EDIT_PROMPT_SEEDED if seeded else tpl.EDIT_PROMPT).format(
        question=last_user_text(r["prompt"]), draft=y1, direction=d,
        aspects=" and ".join(picked[r["id"]]) if seeded else ", ".join(aspects))}],
        template_version=TEMPLATE_VERSION + ("+seeded" if seeded else "")) for r, y1, d, _ in todo]
    parsed = {}
    outputs = Counter()  # every edit output checked, retries included, and those that did not parse

    def check(text: str) -> str | None:
        if seeded:
            resp = clean_output(text)
            why = degenerate_reason(resp)
            if why is None:
                parsed[text] = (None, resp)
            return why and f"edited response {why}"
        a, resp, why = parse_edit(text, aspects)
        outputs["edits"] += 1
        if why is None:
            parsed[text] = (a, resp)
        elif why.startswith(("unparseable", "edit names no aspect")):
            outputs["unparseable"] += 1
        return why

    fin2: list = []
    edits, why2, _ = sample_with_retries(engine, edit_reqs, params, cfg.max_retries, check=check,
                                         post=lambda t: t.strip(), finish=fin2)
    out = []
    for (r, y1, d, f1), e, w, f2 in zip(todo, edits, why2, fin2):
        if e is None:
            dropped[w or "unparseable edit"] += 1
            continue
        changed, y2 = parsed[e]
        changed = changed or picked[r["id"]]
        if clean_output(y2) == y1:
            dropped["edit identical to the draft"] += 1
            continue
        chosen, rejected = (y2, y1) if d == "better" else (y1, y2)
        out.append({"prompt": r["prompt"], "chosen": assistant(chosen), "rejected": assistant(rejected),
                    "source": f"{NAME}/{TEMPLATE_VERSION}",
                    "meta": {"prompt_id": r["id"], "direction": d, "aspects": changed, "guideline": cfg.guideline,
                             "guideline_version": g_version, "raw_edit": e,
                             "finish_reasons": {"draft": f1, "edit": f2}}})
    if report is not None:
        report.update({"input_examples": len(rows), "pairs": len(out), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped)})
        if not seeded:  # seeded edits are plain text: nothing to parse
            report["edit_outputs"] = {"checked": outputs["edits"], "unparseable": outputs["unparseable"]}
    return pair_table(out)


@step(NAME, config=ConditionalConfig, input="prompt", output="pair")
def run_step(cfg: ConditionalConfig, table: pa.Table, ctx):
    import json

    report: dict = {}
    pairs = generate(table, ctx.engine(), cfg, seed=ctx.seed, report=report)
    metas = [json.loads(m) for m in pairs.column("meta").to_pylist()]
    dirs = Counter(m["direction"] for m in metas)
    asp = Counter(a for m in metas for a in m["aspects"])
    eo = report.get("edit_outputs")
    q = pair_quality(pairs, finish=[m["finish_reasons"][k] for m in metas for k in ("draft", "edit")],
                     parse=(eo["checked"], eo["unparseable"]) if eo else None, parse_what="tagged edits")
    sections, figures = generator_card(
        ("Preference-conditional synthesis", f"{report['pairs']} pairs from {report['input_examples']} prompts. "
         "y2 edits y1 towards a seeded direction on named aspects; labels by construction (RMBoost, arXiv 2407.16008)."),
        pairs, report, lengths_title="Conditional: chosen vs rejected length", draw=draws_figures(ctx), quality=q,
        sections=[("Directions and aspects", f"guideline `{cfg.guideline}` ({guideline_version(cfg)}), aspects named by "
                   f"{'the seed' if cfg.aspect_choice == 'seeded' else 'the editor'}\n\n"
                   "directions: " + ", ".join(f"{k}: {v}" for k, v in sorted(dirs.items())) +
                   "\n\naspects edited: " + ", ".join(f"{k}: {v}" for k, v in asp.most_common()))])
    return StepResult(tables={"train": pairs}, card_sections=sections, figures=figures, report=report,
                      lineage={"description": quality.headline(q),
                               "templates": {"conditional": TEMPLATE_VERSION, "aspect_guidelines": guideline_version(cfg)},
                               "guideline": cfg.guideline})
