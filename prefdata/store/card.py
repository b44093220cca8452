"""The dataset card: an HF-compatible README.md generated from the data and its lineage.

The YAML header carries `configs` (so `datasets.load_dataset(<version dir>)` finds the splits) and
deliberately no `dataset_info`: datasets enforces it on load, and a hand-made one that drifts from
the data makes the version unloadable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "template.md"
MESSAGE_COLS = ("prompt", "chosen", "rejected", "completion")


def _yaml_header(splits: dict[str, pa.Table], manifest: dict) -> str:
    header = {
        # The config name carries the content hash: `datasets` keys its cache on the folder's base
        # name ("v1") and the config, so a fixed name would let two stores' v1 share a cache entry.
        "configs": [{"config_name": f"sha-{manifest['content_hash'][:16]}", "default": True,
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
        "tags": ["prefdata", "preference-data" if manifest["kind"] == "pair" else manifest["kind"]],
    }
    lic = (manifest.get("lineage") or {}).get("license")
    if lic:
        header["license"] = lic
    return yaml.safe_dump(header, sort_keys=False).strip()


SCORE_COLS = ("chosen_score", "rejected_score", "strength_mean")
WORDS = "words:"  # summary column prefix: the word count of a message column


def summarize(table: pa.Table) -> pa.Table:
    """What the card needs of a table, a few numbers a row: source, scores and the word count of each
    message column. A split streamed in shards keeps only these, so its card still covers every row."""
    import polars as pl

    cols = {}
    if "source" in table.column_names:
        cols["source"] = table.column("source")
    for c in SCORE_COLS:
        if c in table.column_names:
            cols[c] = table.column(c)
    msg = [c for c in MESSAGE_COLS if c in table.column_names]
    if msg:
        df = pl.from_arrow(table.select(msg))
        if isinstance(df, pl.Series):
            df = df.to_frame()
        for c in msg:
            if df.schema[c] == pl.String:
                words = df[c].str.split(" ").list.len()
            elif isinstance(df.schema[c], pl.List):
                words = df[c].list.eval(pl.element().struct.field("content").str.split(" ").list.len()).list.sum()
            else:
                continue
            cols[WORDS + c] = words.cast(pl.Int64).to_arrow()
    return pa.table(cols) if cols else pa.table({"_rows": pa.nulls(table.num_rows, pa.int8())})


def length_stats(table: pa.Table) -> dict[str, dict[str, float]]:
    """Word counts of the text in each message column: min/mean/median/p95/max (vectorised). Takes a
    data table or its `summarize` table."""
    import polars as pl

    if not any(c.startswith(WORDS) for c in table.column_names):
        table = summarize(table)
    cols = [c for c in table.column_names if c.startswith(WORDS)]
    if not cols or table.num_rows == 0:
        return {}
    df = pl.from_arrow(table.select(cols))
    out = {}
    for c in cols:
        words = df[c]
        out[c[len(WORDS):]] = {"min": words.min(), "mean": round(words.mean(), 1), "median": words.median(),
                               "p95": words.quantile(0.95), "max": words.max()}
    return out


def _histograms(splits: dict[str, pa.Table], dest: Path) -> dict[str, str]:
    """Score and strength histograms, drawn whenever those columns hold values (splits: summaries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = pa.concat_tables(list(splits.values()), promote_options="permissive")
    made = {}

    def values(col):
        if col not in table.column_names:
            return np.array([])
        arr = table.column(col).to_numpy(zero_copy_only=False)
        arr = np.asarray([x for x in arr if x is not None], dtype=float) if arr.dtype == object else arr.astype(float)
        return arr[np.isfinite(arr)]

    cs, rs = values("chosen_score"), values("rejected_score")
    if cs.size or rs.size:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist([cs, rs], bins=20, label=["chosen", "rejected"])
        ax.set_xlabel("score"), ax.set_ylabel("pairs"), ax.set_title("Score distribution"), ax.legend()
        fig.tight_layout(), fig.savefig(dest / "scores.png", dpi=110), plt.close(fig)
        made["scores"] = "scores.png"
    st = values("strength_mean")
    if st.size:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(st, bins=40, color="tab:purple")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("preference strength (mean vote)"), ax.set_ylabel("pairs"), ax.set_title("Strength")
        fig.tight_layout(), fig.savefig(dest / "strength.png", dpi=110), plt.close(fig)
        made["strength"] = "strength.png"
    return made


def _duplicates_line(dups: dict[str, dict[str, int]]) -> str:
    # Counted, not dropped: dropping is the caller's choice (`--dedup`, `store.dedup`).
    ids = sum(d.get("ids", 0) for d in dups.values())
    rows = sum(d.get("rows", 0) for d in dups.values())
    return (f"Duplicates: {ids} rows repeat an earlier row's id, {rows} repeat an earlier row's content "
            "(prompt and responses)" + ("." if not (ids or rows) else "; `store.dedup` or `--dedup` drops them."))


def render_card(name: str, version: str, manifest: dict, splits: dict[str, pa.Table], images: dict[str, str],
                sections: list[tuple[str, str]], dest: Path) -> str:
    """`splits`: each split's data table or its `summarize` table (what a streamed commit keeps)."""
    lineage = manifest.get("lineage") or {}
    auto = _histograms(splits, dest)
    images.update({k: v for k, v in auto.items() if k not in images})

    rows_table = "| split | rows |\n|---|---|\n" + "\n".join(f"| {s} | {t.num_rows} |" for s, t in splits.items())
    rows_table += "\n\n" + _duplicates_line(manifest.get("duplicates") or {})
    sources = "—"
    first = next(iter(splits.values()))
    if "source" in first.column_names and first.num_rows:
        import polars as pl

        counts = pl.from_arrow(first.select(["source"])).group_by("source").len().sort("len", descending=True)
        sources = "| source | rows |\n|---|---|\n" + "\n".join(f"| {s or '(none)'} | {n} |" for s, n in counts.iter_rows())
    stats = length_stats(first)
    lengths = ("| column | min | mean | median | p95 | max |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {c} | {v['min']} | {v['mean']} | {v['median']} | {v['p95']} | {v['max']} |" for c, v in stats.items())
        if stats else "—")
    body_sections = [f"## {title}\n\n{text}" for title, text in sections]
    if images:
        body_sections.append("## Plots\n\n" + "\n\n".join(f"![{k}]({v})" for k, v in images.items()))
    step = lineage.get("step")
    parents = lineage.get("parents") or []
    lineage_lines = [f"- parents: {', '.join(f'`{p}`' for p in parents) if parents else '(none)'}"]
    for key in ("engine", "model", "templates", "seeds", "fingerprint", "side_tables"):
        if lineage.get(key):
            val = lineage[key]
            lineage_lines.append(f"- {key}: `{json.dumps(val, sort_keys=True) if isinstance(val, dict) else val}`")
    lineage_lines.append(f"- prefdata: {manifest['prefdata_version']}")
    return TEMPLATE.read_text(encoding="utf-8").format(
        yaml_header=_yaml_header(splits, manifest),
        name=name, version=version, kind=manifest["kind"], content_hash=manifest["content_hash"],
        created=manifest["created"], prefdata_version=manifest["prefdata_version"],
        description=lineage.get("description") or f"A `{manifest['kind']}` dataset version committed by prefdata.",
        rows_table=rows_table, sources=sources, lengths=lengths, sections="\n\n".join(body_sections),
        command=manifest.get("command") or "(committed from Python)",
        step_yaml=yaml.safe_dump(step, sort_keys=False).strip() if step else "(none recorded)",
        lineage="\n".join(lineage_lines),
    )
