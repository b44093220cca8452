"""RLCD: contrastive prompting for preference pairs (Yang et al. 2023, arXiv 2307.12950).

For each dialogue prefix, one descriptor pair (positive, negative) is drawn with a seed. The model
continues the dialogue twice: under the positive descriptor (o+) and under the negative one (o-).
o+ is chosen and o- rejected by construction; no judge is involved.

    from prefdata.generators import rlcd
    table = rlcd.generate(prompts, engine, rlcd.RLCDConfig(principle_set="harmless"))
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Literal

import pyarrow as pa
from pydantic import Field

from prefdata import quality
from prefdata.engines.base import ChatRequest, Engine
from prefdata.generators.common import (
    SamplingConfig,
    assistant,
    draws_figures,
    generator_card,
    pair_quality,
    pair_table,
    sample_with_retries,
)
from prefdata.prompts import rlcd as tpl
from prefdata.steps import StepResult, step

NAME = "rlcd"


class RLCDConfig(SamplingConfig):
    principle_set: str = Field("harmless", description="Descriptor set: 'harmless' (16 pairs) or 'helpful', "
                               "or a set from `principles_file`.")
    principles_file: str | None = Field(None, description="YAML with `version` and `sets:` of [positive, negative] "
                                        "pairs, to use your own descriptors.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature, in [0, 2]; the paper "
                               "samples at T=1 (arXiv 2307.12950).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling, in (0, 1]; the paper samples the full "
                         "distribution (1).")
    max_tokens: int = Field(128, ge=1, le=4096, description="New tokens per output, in [1, 4096]; the paper used "
                            "300, smaller is faster on CPU.")
    category_sets: dict[str, str] = Field(default_factory=dict, description="Per-example set by the prompt's "
                                          "meta.category, e.g. {harmlessness: harmless, helpfulness: helpful}; "
                                          "other examples use `principle_set`.")
    rescore: bool = Field(False, description="RLCD-Rescore (arXiv 2307.12950, Sec. 4): re-label each (o+, o-) with a "
                          "pairwise judge shown both orders; an order-dependent verdict is a tie, kept with "
                          "label_prob 0.5 and meta.rescore='tie' (soft losses learn nothing from it, hard "
                          "losses drop it).")
    rescore_method: Literal["generate", "logprob"] = Field(
        "generate", description="How the rescore judge answers: generate ('Winner: A|B|tie', any engine) or logprob "
        "(log-likelihood of ' A' vs ' B' after 'Winner:', as in the paper; transformers/vllm engines only).")
    max_retries: int = Field(5, ge=0, le=20, description="Re-sample an empty or degenerate output this many "
                             "times, then drop the example with the reason recorded (the paper retries 5x).")


def pair_index(example_id: str, seed: int, n_pairs: int) -> int:
    """One descriptor pair per example, from (seed, example id): stable under reordering and resume."""
    h = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") % n_pairs


def generate(prompts: pa.Table, engine: Engine, config: RLCDConfig | None = None, *, seed: int = 0,
             report: dict | None = None) -> pa.Table:
    """Return a PAIR-schema table with one (o+, o-) pair per prompt that survived the filters.

    `prompts` needs `id` and `prompt` (messages ending where the assistant speaks next).
    `report`, when given, receives drop counts and reasons.
    """
    config = config or RLCDConfig()
    version, sets = tpl.load_principles(config.principles_file)
    if config.principle_set not in sets:
        from prefdata.errors import ConfigError

        raise ConfigError(f"principle_set '{config.principle_set}' not found (have: {', '.join(sets)})")
    for name in config.category_sets.values():
        if name not in sets:
            from prefdata.errors import ConfigError

            raise ConfigError(f"category_sets: principle set '{name}' not found (have: {', '.join(sets)})")
    template_version = f"{tpl.TEMPLATE_VERSION}+{version}"
    cols = ["id", "prompt"] + (["meta"] if "meta" in prompts.column_names else [])
    rows = prompts.select(cols).to_pylist()

    requests, picks = [], []
    for r in rows:
        prompt = _until_assistant_turn(r["prompt"])
        set_name = config.category_sets.get(_category(r.get("meta")), config.principle_set)
        pairs = sets[set_name]
        i = pair_index(r["id"], seed, len(pairs))
        pos, neg = pairs[i]
        picks.append((prompt, i, pos, neg, set_name))
        for desc, opp in ((pos, neg), (neg, pos)):
            msgs, prefix = tpl.build_messages(prompt, desc, opp)
            requests.append(ChatRequest(messages=msgs, assistant_prefix=prefix, template_version=template_version,
                                        request_id=r["id"]))
    params = config.sampling(seed, stop=("\nHuman:", "\nUser:", "\n\nHuman"))
    finish: list = []
    texts, reasons, attempts = sample_with_retries(engine, requests, params, config.max_retries, finish=finish)

    out, dropped = [], Counter()
    for k, (r, (prompt, i, pos, neg, set_name)) in enumerate(zip(rows, picks)):
        o_pos, o_neg = texts[2 * k], texts[2 * k + 1]
        if o_pos is None or o_neg is None:
            side, j = ("positive", 2 * k) if o_pos is None else ("negative", 2 * k + 1)
            tries = "" if (reasons[j] or "").startswith("engine error") else f" after {attempts[j]} tries"
            dropped[f"{side} output {reasons[j]}{tries}"] += 1
            continue
        if o_pos == o_neg:
            dropped["identical outputs"] += 1
            continue
        out.append({
            "prompt": prompt, "chosen": assistant(o_pos), "rejected": assistant(o_neg),
            "source": f"{NAME}/{template_version}",
            "meta": {"principle_set": set_name, "pair_index": i, "positive": pos, "negative": neg,
                     "principles_version": version, "prompt_id": r["id"],
                     "attempts": [attempts[2 * k], attempts[2 * k + 1]],
                     "finish_reasons": [finish[2 * k], finish[2 * k + 1]]},
        })
    if config.rescore and out:
        rescore(out, engine, seed, method=config.rescore_method)
    if report is not None:
        report.update({"input_examples": len(rows), "pairs": len(out), "dropped": sum(dropped.values()),
                       "drop_reasons": dict(dropped)})
        if config.rescore:
            report["rescore"] = dict(Counter(r["meta"]["rescore"] for r in out))
    return pair_table(out)


def rescore(rows: list[dict], engine: Engine, seed: int, method: str = "generate") -> None:
    """Replace construction labels by a position-swapped judge's (in place). agree: kept; the judge
    prefers o-: swapped; order-dependent or unparseable: tie, label_prob 0.5 (no guess;
    a null here used to be read as 1.0 by the trainers, a confident construction label)."""
    from prefdata.judges.pairwise import PairwiseJudge

    verdicts, raw_ab, raw_ba = PairwiseJudge(method=method).judge(engine, [r["prompt"] for r in rows],
                                           [r["chosen"][0]["content"] for r in rows],
                                           [r["rejected"][0]["content"] for r in rows], seed=seed)
    for r, v, ab, ba in zip(rows, verdicts, raw_ab, raw_ba):
        r["meta"]["rescore_raw"] = [ab, ba]  # the judge's own words, both orders, kept for audit
        if v == 1.0:
            r["meta"]["rescore"] = "agree"
        elif v == 0.0:
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
            r["flipped"] = True
            r["meta"]["rescore"] = "judge prefers the negative output"
        else:
            r["label_prob"] = 0.5
            r["meta"]["rescore"] = "tie"


def _category(meta) -> str | None:
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    return meta.get("category") if isinstance(meta, dict) else None


def _until_assistant_turn(messages: list[dict]) -> list[dict]:
    """A prefix must end where the assistant speaks next: trim a trailing assistant turn."""
    msgs = list(messages)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


@step(NAME, config=RLCDConfig, input="prompt", output="pair")
def run_step(cfg: RLCDConfig, table: pa.Table, ctx):

    report: dict = {}
    pairs = generate(table, ctx.engine(), cfg, seed=ctx.seed, report=report)
    version, sets = tpl.load_principles(cfg.principles_file)
    metas = [json.loads(m) for m in pairs.column("meta").to_pylist()]
    used = Counter((m["principle_set"], m["pair_index"]) for m in metas)
    principles = "\n".join(f"| {name} | {i} | {p} | {n} | {used.get((name, i), 0)} |"
                           for name in sorted({cfg.principle_set, *cfg.category_sets.values()})
                           for i, (p, n) in enumerate(sets[name]))
    sections = [(f"Descriptor pairs ({version})",
                 "| set | index | positive | negative | pairs |\n|---|---|---|---|---|\n" + principles)]
    templates = {"rlcd_prompt": tpl.TEMPLATE_VERSION, "rlcd_principles": version}
    if cfg.rescore:
        from prefdata.judges.pairwise import PairwiseJudge

        templates["pairwise_judge"] = PairwiseJudge(method=cfg.rescore_method).template_version
        sections.insert(0, ("RLCD-Rescore", "A position-swapped pairwise judge re-labelled every pair "
                            f"({cfg.rescore_method}); a verdict that flips with the order is a tie with "
                            "label_prob 0.5, never a guess: soft losses keep it at 0.5, hard losses drop it."
                            "\n\n| verdict | pairs |\n|---|---|\n" +
                            "\n".join(f"| {k} | {v} |" for k, v in sorted(report.get("rescore", {}).items()))))
    judged = (quality.pairwise_judgements(*zip(*(m["rescore_raw"] for m in metas))) if metas else
              {"parse": (0, 0), "repeated": []}) if cfg.rescore else {}
    q = pair_quality(pairs, finish=[f for m in metas for f in m["finish_reasons"]], parse_what="rescore verdicts",
                     **judged)
    sections, figures = generator_card(
        ("RLCD generation", f"{report['pairs']} pairs from {report['input_examples']} prompts "
                            f"({report['dropped']} dropped). Chosen = continuation under the positive "
                            f"descriptor, rejected = under the negative one (Yang et al. 2023, arXiv 2307.12950)."),
        pairs, report, sections=sections, lengths_title="RLCD: chosen vs rejected length", draw=draws_figures(ctx),
        quality=q)
    return StepResult(tables={"train": pairs}, kind="pair", card_sections=sections, figures=figures,
                      lineage={"description": quality.headline(q), "templates": templates,
                               "seeds": {"pipeline": ctx.seed}},
                      report=report)
