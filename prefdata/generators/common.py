"""The generator skeleton: what every generator shares.

- `SamplingConfig`: the sampling fields (temperature, top_p, max_tokens) every generator's Config
  extends, and `sampling()` turning them into the engine's SamplingParams with the pipeline's seed;
- `sample_with_retries` with its output filters (`clean_output`, `degenerate_reason`);
- `pair_table`: PAIR rows from dicts; `pair_quality`: the quality counts of PAIR rows;
- `generator_card`: the card sections and figures of a generator step, in one order, opening with
  the quality verdict (`prefdata.quality`: measured from the rows, the same checks for every generator).

A new generator is one module (a Config extending SamplingConfig, `generate`, and an `@step`
function returning `generator_card(..., quality=pair_quality(...))` with
`lineage["description"] = quality.headline(...)`), one YAML in pipelines/ and one test; see
docs/CONTRIBUTING.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata import quality as quality_checks
from prefdata.engines.base import ChatRequest, Completion, Engine, SamplingParams
from prefdata.schema import PAIR, content_id


class SamplingConfig(BaseModel):
    """The sampling fields of every generator's Config; a generator whose paper samples otherwise
    redeclares the field with the paper's default and says so in its description. The seed is the
    pipeline's (`seed:`, moved by `repeat` per iteration), never a step field, so one pipeline seed
    reproduces every step."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature, in [0, 2]; 0 is greedy.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling (Holtzman et al. 2020, arXiv 1904.09751): "
                         "the smallest token set with this much probability, in (0, 1]; 1 turns it off.")
    max_tokens: int = Field(128, ge=1, le=4096, description="New tokens per output, in [1, 4096]; an output cut "
                            "here ends with finish_reason 'length'.")

    def sampling(self, seed: int, **extra) -> SamplingParams:
        """These fields as engine SamplingParams; `extra` sets the rest (n, stop)."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed,
                              **extra)

# A new turn by the user means the model started writing the other side of the dialogue.
TURN_MARKERS = re.compile(r"\n\s*(Human|User|USER|H)\s*:|<\|im_start\|>\s*user", re.MULTILINE)
LEADING_TAG = re.compile(r"^\s*\([^()\n]{1,60}\)\s*")


def cut_at_new_turn(text: str) -> str:
    m = TURN_MARKERS.search(text)
    return (text[: m.start()] if m else text).strip()


def degenerate_reason(text: str, *, min_chars: int = 2) -> str | None:
    """Why an output is unusable, or None. Cheap checks a human would agree with at a glance."""
    stripped = text.strip()
    if len(stripped) < min_chars:
        return "empty"
    words = stripped.split()
    if len(words) >= 12:
        trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        # Looping text ("I am sorry. I am sorry. ...") has few distinct trigrams.
        if len(set(trigrams)) / len(trigrams) < 0.35:
            return "repetitive"
    lines = [ln.strip() for ln in stripped.splitlines() if ln.strip()]
    if len(lines) >= 4 and len(set(lines)) / len(lines) < 0.5:
        return "repetitive"
    return None


def clean_output(text: str) -> str:
    return LEADING_TAG.sub("", cut_at_new_turn(text)).strip()


def sample_with_retries(engine: Engine, requests: list[ChatRequest], params: SamplingParams,
                        max_retries: int,
                        check: Callable[[str], str | None] = degenerate_reason,
                        post: Callable[[str], str] = clean_output,
                        finish: list | None = None) -> tuple[list[str | None], list[str | None], list[int]]:
    """One accepted output per request, retrying rejected ones with a new seed offset.

    Returns (texts, reasons, attempts): text None with the last rejection reason when every try
    failed, or at once on an engine error (the pipeline counts those as failed requests). Retries are deterministic (attempt k uses seed offset base + k), so a resumed run
    hits the request cache for every attempt it already made. `finish`, when given, is filled with
    each accepted output's finish_reason ("length": it stopped at max_tokens), None where none was.
    """
    n = len(requests)
    texts: list[str | None] = [None] * n
    reasons: list[str | None] = [None] * n
    attempts = [0] * n
    pending = list(range(n))
    if finish is not None:
        finish[:] = [None] * n
    one = replace(params, n=1)
    for attempt in range(max_retries + 1):
        if not pending:
            break
        batch = [replace(requests[i], seed_offset=requests[i].seed_offset + attempt * 7919) for i in pending]
        outs = engine.generate(batch, one)
        still = []
        for i, comps in zip(pending, outs):
            attempts[i] = attempt + 1
            comp: Completion = comps[0]
            if comp.finish_reason == "error":
                # Not re-sampled with a new seed: the engine has already retried it, and a rerun must
                # ask the very same request again (same seed) so it yields the fault-free row.
                reasons[i] = f"engine error: {comp.error}"
                continue
            text = post(comp.text)
            why = check(text)
            if why is None:
                texts[i], reasons[i] = text, None
                if finish is not None:
                    finish[i] = comp.finish_reason
            else:
                reasons[i] = why
                still.append(i)
        pending = still
    return texts, reasons, attempts


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def pair_table(rows: list[dict]) -> pa.Table:
    """Build a PAIR-schema table from dicts with prompt/chosen/rejected/source (+ optional fields)."""
    cols: dict[str, list] = {f.name: [] for f in PAIR}
    extra: dict[str, list] = {}
    for r in rows:
        r = dict(r)
        r.setdefault("id", content_id(r["prompt"], r["chosen"], r["rejected"]))
        if "label_prob" not in r:  # an explicit None (a judged tie) stays null
            r["label_prob"] = 1.0
        r.setdefault("margin", 0.0)
        r.setdefault("flipped", False)
        meta = r.get("meta", {})
        r["meta"] = meta if isinstance(meta, str) else json.dumps(meta, ensure_ascii=False, sort_keys=True)
        for name in cols:
            cols[name].append(r.get(name))
        for k in r.keys() - cols.keys():
            extra.setdefault(k, [None] * (len(cols["id"]) - 1)).append(r[k])
        for k in extra.keys() - r.keys():
            extra[k].append(None)
    table = pa.table(cols, schema=PAIR)
    for k, v in extra.items():
        table = table.append_column(k, pa.array(v))
    return table


def pair_quality(table: pa.Table, **kwargs) -> dict:
    """`prefdata.quality.measure` on PAIR rows: chosen vs rejected (last turn) and label_prob;
    `kwargs` are measure's (finish, parse, parse_what, repeated)."""
    cols = table.select(["chosen", "rejected", "label_prob"]).to_pydict()
    return quality_checks.measure([m[-1]["content"] for m in cols["chosen"]], [m[-1]["content"] for m in cols["rejected"]],
                           kind="pair", label_prob=cols["label_prob"], **kwargs)


def drop_reasons_markdown(reasons: dict[str, int]) -> str:
    if not reasons:
        return "No examples were dropped."
    lines = ["| reason | examples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def examples_markdown(table: pa.Table, k: int = 3, width: int = 300) -> str:
    out = []
    for r in table.slice(0, k).to_pylist():
        last_user = next((m["content"] for m in reversed(r["prompt"]) if m["role"] == "user"), "")
        out.append(f"**Prompt:** {last_user[:width]}\n\n- **chosen:** {r['chosen'][-1]['content'][:width]}\n"
                   f"- **rejected:** {r['rejected'][-1]['content'][:width]}\n")
    return "\n".join(out) or "(no rows)"


def length_figure(table: pa.Table, title: str):
    """Histogram of chosen vs rejected lengths (words): the first thing to check for length bias."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    df = pl.from_arrow(table.select(["chosen", "rejected"]))
    lens = df.select(
        pl.col("chosen").list.last().struct.field("content").str.split(" ").list.len().alias("chosen"),
        pl.col("rejected").list.last().struct.field("content").str.split(" ").list.len().alias("rejected"),
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([lens["chosen"].to_numpy(), lens["rejected"].to_numpy()], bins=20, label=["chosen", "rejected"])
    ax.set_xlabel("words")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def generator_card(summary: tuple[str, str], table: pa.Table, report: dict, *,
                   sections: list[tuple[str, str]] = (), examples: str | None = None,
                   lengths_title: str | None = None, draw: bool = True,
                   quality: dict | None = None) -> tuple[list[tuple[str, str]], dict]:
    """(card sections, figures) of a generator step, in one order: the quality verdict (`quality`,
    counts from `prefdata.quality.measure`, when given), what was made (`summary`, a
    (title, text) pair), the generator's own `sections`, drop reasons (when the report has them),
    examples (pairs by default, or the given markdown). `quality` is also stored as report["quality"].
    Figures: the chosen-vs-rejected length
    histogram, keyed "lengths", when `lengths_title` is given, there are rows and `draw` is true.
    Pass `draw=draws_figures(ctx)`: a later shard's figures are thrown away unseen, and drawing one
    costs about as much as a shard's bookkeeping.

    Rows per split and per source are not here: the store card shows them for every version."""
    out = [summary, *sections]
    if quality is not None:  # first, and in the report: the pipeline repeats its warnings on the step's line
        out.insert(0, quality_checks.section(quality))
        report["quality"] = quality
    if "drop_reasons" in report:
        out.append(("Drop reasons", drop_reasons_markdown(report["drop_reasons"])))
    out.append(("Examples", examples if examples is not None else examples_markdown(table)))
    figures = {"lengths": length_figure(table, lengths_title)} if draw and lengths_title and len(table) else {}
    return out, figures


def draws_figures(ctx) -> bool:
    """Whether this call's figures will be kept: only the first shard's are (see StepContext.shard)."""
    return getattr(ctx, "shard", 0) == 0


def histogram_figure(series: dict[str, list[float]], title: str, xlabel: str, bins=20):
    """Overlaid histograms of named value lists (scores, lengths); empty lists are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    kept = {k: v for k, v in series.items() if v}
    if kept:
        ax.hist(list(kept.values()), bins=bins, label=list(kept))
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    fig.tight_layout()
    return fig
