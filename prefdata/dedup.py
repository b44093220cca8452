"""Deduplication and decontamination, the `dedup` step: exact, near-duplicate, and eval-set overlap.

    - name: clean
      uses: dedup
      input: step:rlcd
      output: pairs-dedup
      config: {on: prompt, threshold: 0.8, decontaminate: [evals/mt_bench.jsonl, heldout@v2]}

Three passes, in this order, each over the rows the previous one kept (the first row of a group wins):
1. exact: the same text after normalisation (lower case, punctuation and runs of spaces folded);
2. near: estimated Jaccard similarity of word `shingle`-grams at least `threshold`, by MinHash
   (Broder 1997, "On the resemblance and containment of documents") with LSH banding (Indyk and
   Motwani 1998; Leskovec, Rajaraman and Ullman, *Mining of Massive Datasets* ch. 3) through
   `datasketch`; a candidate from the LSH index is confirmed by its MinHash estimate before a drop;
3. decontamination: a row that shares any word `ngram`-gram with a prompt of the evaluation sets is
   dropped (13-grams, as in GPT-3's contamination study, Brown et al. 2020, arXiv 2005.14165); an eval
   prompt shorter than `ngram` words counts as one gram of its own length.
What is compared is the prompt (`on: prompt`) or the prompt with both answers (`on: pair`). Removed
rows go to the `removed` side table with the pass and the row they matched; the card shows counts,
thresholds and examples. The step needs the whole table (a twin may be anywhere), so it never streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.errors import ConfigError
from prefdata.steps import StepResult, step

BUILTIN_DIR = Path(__file__).parent / "data"


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    needs_engine: bool = Field(False, description="Internal: the step calls no engine.")
    on: Literal["prompt", "pair"] = Field("prompt", description="Compare prompts only, or prompt + chosen + "
                                          "rejected (a pair repeated with other answers is kept with `pair`).")
    exact: bool = Field(True, description="Drop rows whose normalised text repeats an earlier row's.")
    near: bool = Field(True, description="Drop near-duplicates by MinHash LSH (Broder 1997).")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity of word shingles at or above "
                             "which two rows are near-duplicates; (0, 1]. 0.8 is datatrove's and NeMo-Curator's "
                             "usual choice for web text.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations: the estimate's standard error "
                          "is about sqrt(J(1-J)/num_perm), 0.035 at J=0.8 with 128.")
    shingle: int = Field(5, ge=1, le=50, description="Words per shingle for near-duplicate MinHash.")
    decontaminate: list[str] = Field(default_factory=list, description="Evaluation prompt sets (files, store refs "
                                     "name@vN, builtin:<set>): rows sharing a word n-gram with any of their "
                                     "prompts are dropped.")
    ngram: int = Field(13, ge=3, le=64, description="Words per n-gram for decontamination (13 as in Brown et al. "
                       "2020, arXiv 2005.14165).")
    seed: int = Field(1, description="MinHash seed (fixed, so a rerun drops the same rows).")
    examples: int = Field(3, ge=0, le=20, description="Examples of each removal shown in the card.")


def _texts(table: pa.Table, cols: list[str]) -> pl.Series:
    """Each row's text of `cols` (message lists joined by newlines), normalised for comparison:
    lower case, anything but letters and digits folded to one space."""
    df = pl.from_arrow(table.select(cols))
    if isinstance(df, pl.Series):
        df = df.to_frame()
    parts = []
    for c in cols:
        s = df[c]
        if isinstance(s.dtype, pl.List):
            s = s.list.eval(pl.element().struct.field("content")).list.join("\n")
        parts.append(s.cast(pl.String).fill_null(""))
    joined = pl.DataFrame({f"c{k}": p for k, p in enumerate(parts)}).select(
        pl.concat_str(pl.all(), separator="\n")).to_series()
    return (joined.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars())


def _grams(words: list[str], n: int) -> set[str]:
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def _eval_prompts(sources: list[str]) -> list[str]:
    from prefdata import io

    texts: list[str] = []
    for src in sources:
        path = BUILTIN_DIR / f"{src[8:]}.jsonl" if src.startswith("builtin:") else None
        if path is not None and not path.is_file():
            raise ConfigError(f"decontaminate: unknown built-in prompt set '{src[8:]}'")
        table = io.read(str(path) if path is not None else src)
        if "prompt" not in table.column_names:
            raise ConfigError(f"decontaminate: {src} has no prompt column")
        texts += _texts(table, ["prompt"]).to_list()
    return texts


def dedup(table: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, list[str | None], list[int | None], dict]:
    """(keep mask, reason per row, index of the matched row or eval prompt, info for the card)."""
    cols = ["prompt"] if cfg.on == "prompt" else [c for c in ("prompt", "chosen", "rejected") if c in table.column_names]
    if "prompt" not in table.column_names:
        raise ConfigError("dedup: the input has no prompt column")
    text = _texts(table, cols)
    n = len(text)
    keep = np.ones(n, dtype=bool)
    reason: list[str | None] = [None] * n
    match: list[int | None] = [None] * n
    info: dict = {}
    if cfg.exact and n:
        first = pl.DataFrame({"t": text, "i": np.arange(n)}).select(pl.col("i").min().over("t"))["i"].to_numpy()
        for i in np.flatnonzero(first != np.arange(n)).tolist():
            keep[i], reason[i], match[i] = False, "exact", int(first[i])
    words = [t.split() for t in text.to_list()]
    if cfg.near and n:
        from datasketch import MinHash, MinHashLSH

        todo = np.flatnonzero(keep)
        sets = [[g.encode() for g in _grams(words[i], cfg.shingle)] or [b""] for i in todo]
        hashes = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed)
        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        info["lsh_bands"], info["lsh_rows"] = lsh.b, lsh.r
        by_key = {}
        for i, m in zip(todo.tolist(), hashes):
            # The first kept candidate at or above the threshold (by the MinHash estimate) is the twin.
            twins = [j for j in lsh.query(m) if by_key[j].jaccard(m) >= cfg.threshold]
            if twins:
                keep[i], reason[i], match[i] = False, "near", min(twins)
                continue
            lsh.insert(i, m)
            by_key[i] = m
    if cfg.decontaminate and n:
        evals = _eval_prompts(cfg.decontaminate)
        owner: dict[str, int] = {}
        for k, t in enumerate(evals):
            for g in _grams(t.split(), cfg.ngram):
                owner.setdefault(g, k)
        info["eval_prompts"], info["eval_ngrams"] = len(evals), len(owner)
        # A short eval prompt (fewer than `ngram` words) is matched as a whole, among the row's grams
        # of its own length.
        short: dict[int, set[str]] = {}
        for g in owner:
            if len(g.split()) < cfg.ngram:
                short.setdefault(len(g.split()), set()).add(g)
        for i in np.flatnonzero(keep).tolist():
            w = words[i]
            hit = next((owner[g] for g in _grams(w, cfg.ngram) if g in owner), None)
            for size, grams in short.items():
                if hit is not None:
                    break
                if len(w) >= size:
                    hit = next((owner[g] for g in _grams(w, size) if g in grams), None)
            if hit is not None:
                keep[i], reason[i], match[i] = False, "contaminated", hit
        info["evals"] = evals
    return keep, reason, match, info


def _snippet(row: dict, width: int = 160) -> str:
    p = row.get("prompt")
    if isinstance(p, list):
        p = " / ".join(str(m.get("content", "")) for m in p)
    return str(p).replace("\n", " ").replace("|", "\\|")[:width]


def card_markdown(cfg: DedupConfig, table: pa.Table, keep: np.ndarray, reason: list, match: list, info: dict) -> str:
    counts = {r: sum(1 for x in reason if x == r) for r in ("exact", "near", "contaminated")}
    lines = ["| | rows |", "|---|---|", f"| input | {len(keep):,} |",
             *[f"| removed: {k} | {v:,} |" for k, v in counts.items()], f"| kept | {int(keep.sum()):,} |", "",
             f"Compared: `{cfg.on}`. Exact: {'on' if cfg.exact else 'off'} (normalised text). Near: "
             + (f"Jaccard >= {cfg.threshold} on {cfg.shingle}-word shingles, MinHash {cfg.num_perm} permutations, "
                f"LSH {info.get('lsh_bands')} bands x {info.get('lsh_rows')} rows" if cfg.near else "off") + ". "
             + (f"Decontamination: {cfg.ngram}-word n-grams against {info.get('eval_prompts', 0):,} prompts "
                f"({', '.join(f'`{s}`' for s in cfg.decontaminate)})." if cfg.decontaminate else "No decontamination.")]
    rows = table.select(["prompt"]).to_pylist()
    for r in ("exact", "near", "contaminated"):
        idx = [i for i, x in enumerate(reason) if x == r][:cfg.examples]
        if not idx:
            continue
        lines += ["", f"Examples ({r}):", "", "| removed | matched |", "|---|---|"]
        for i in idx:
            other = info["evals"][match[i]][:160] if r == "contaminated" else _snippet(rows[match[i]])
            lines.append(f"| {_snippet(rows[i])} | {other} |")
    return "\n".join(lines)


@step("dedup", config=DedupConfig, input="any", output="pair", streaming=False)
def run_step(cfg: DedupConfig, table: pa.Table, ctx) -> StepResult:
    """Drop exact and near-duplicate rows and rows overlapping evaluation prompts."""
    keep, reason, match, info = dedup(table, cfg)
    removed_idx = np.flatnonzero(~keep)
    removed = table.take(pa.array(removed_idx, type=pa.int64())).append_column(
        "dedup_reason", pa.array([reason[i] for i in removed_idx], type=pa.string())).append_column(
        "dedup_match", pa.array([match[i] for i in removed_idx], type=pa.int64()))
    counts = {r: sum(1 for x in reason if x == r) for r in ("exact", "near", "contaminated")}
    kind = "pair" if {"chosen", "rejected"} <= set(table.column_names) else "prompt"
    return StepResult(
        tables={"train": table.filter(pa.array(keep))}, kind=kind,
        card_sections=[("Deduplication and decontamination", card_markdown(cfg, table, keep, reason, match, info))],
        report={"input_examples": len(keep), "kept": int(keep.sum()), **counts,
                "drop_reasons": {k: v for k, v in counts.items() if v}},
        lineage={"dedup": {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "shingle": cfg.shingle,
                           "ngram": cfg.ngram, "decontaminate": list(cfg.decontaminate),
                           "lsh": [info.get("lsh_bands"), info.get("lsh_rows")]}},
        side_tables={"removed": (kind, removed)} if len(removed) else {})
