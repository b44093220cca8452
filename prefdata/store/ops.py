"""Read-side operations over versions: ancestry, diffs and exports to TRL's formats."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefdata.errors import PrefdataError, RefError
from prefdata.store.core import Corrupt, CorruptVersion, Version, datasets_dir, load_table, resolve


def log(ref: str) -> list[tuple[int, Version | Corrupt | str]]:
    """Ancestry as (depth, node): a node is a Version, a Corrupt entry for an ancestor whose manifest
    cannot be read (the walk stops there), or a string for a parent outside the store (a file path
    or a built-in prompt set). The root itself must be readable."""
    out: list[tuple[int, Version | Corrupt | str]] = []
    seen: set[str] = set()

    def walk(r: str, depth: int):
        try:
            v = resolve(r)
        except RefError:
            out.append((depth, r))
            return
        except CorruptVersion as e:
            if depth == 0:
                raise
            name, _, ver = e.ref.partition("@")
            out.append((depth, Corrupt(name, ver, Path(), e.reason)))
            return
        out.append((depth, v))
        if v.ref in seen:
            return
        seen.add(v.ref)
        for p in v.manifest.get("parents") or []:
            walk(p, depth + 1)

    walk(ref, 0)
    return out


def diff(a: str, b: str, split: str = "train") -> dict:
    va, vb = resolve(a), resolve(b)
    ta, tb = load_table(str(va.path), split), load_table(str(vb.path), split)
    ids_a = set(ta.column("id").to_pylist()) if "id" in ta.column_names else set()
    ids_b = set(tb.column("id").to_pylist()) if "id" in tb.column_names else set()
    sa = {f.name: str(f.type) for f in ta.schema}
    sb = {f.name: str(f.type) for f in tb.schema}
    la, lb = va.manifest.get("lineage") or {}, vb.manifest.get("lineage") or {}
    changed_cols = []
    common = sorted(ids_a & ids_b)
    if common:
        da = pl.from_arrow(ta).filter(pl.col("id").is_in(common)).sort("id")
        db = pl.from_arrow(tb).filter(pl.col("id").is_in(common)).sort("id")
        for c in sorted(set(sa) & set(sb)):
            if c != "id" and sa[c] == sb[c] and not da[c].equals(db[c]):
                changed_cols.append(c)
    return {
        "a": va.ref, "b": vb.ref,
        "rows": {va.ref: ta.num_rows, vb.ref: tb.num_rows},
        "added_ids": sorted(ids_b - ids_a), "removed_ids": sorted(ids_a - ids_b),
        "columns_added": sorted(set(sb) - set(sa)), "columns_removed": sorted(set(sa) - set(sb)),
        "columns_retyped": sorted(c for c in set(sa) & set(sb) if sa[c] != sb[c]),
        "columns_changed_on_shared_rows": changed_cols,
        "lineage_changed": sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k)),
    }


def _last_text(col: str) -> pl.Expr:
    return pl.col(col).list.last().struct.field("content")


def _refuse_inside_store(out: Path) -> None:
    """An export never writes into the store: it would replace a committed version's file (or a
    lock or temp dir) in place. Symlinks are followed, on the file and on its folders."""
    root = datasets_dir().resolve()
    try:
        target = out.expanduser().resolve()
    except (OSError, RuntimeError) as e:
        raise PrefdataError(f"--out {out}: cannot resolve the path ({getattr(e, 'strerror', None) or e})") from None
    if target == root or root in target.parents:
        raise PrefdataError(f"--out {out} is inside the dataset store {root}; committed versions are never "
                            "written over: choose a path outside it")


TIE_PROB = 0.5
TRL_FORMATS = ("standard", "conversational")


def label_filter(table, *, drop_ties: bool = False, min_label_prob: float | None = None):
    """(rows kept, counts) of a pair table: `drop_ties` leaves out the ties (label_prob 0.5, or null as in
    older versions), `min_label_prob` every pair whose label_prob is below it (a null one reads 0.5).
    Counts: rows, kept, ties, ties_dropped, below_min (dropped), soft (kept pairs with label_prob other
    than 1 and not a tie), margins (kept pairs with a non-zero margin)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if min_label_prob is not None and not 0.0 <= min_label_prob <= 1.0:
        raise PrefdataError(f"--min-label-prob {min_label_prob}: must be a probability in [0, 1]")
    n = table.num_rows
    if "label_prob" in table.column_names:
        p = pc.fill_null(table.column("label_prob").cast(pa.float64()), TIE_PROB)
    else:
        p = pa.chunked_array([pa.array([1.0] * n, pa.float64())])
    tie = pc.equal(p, TIE_PROB)
    keep = pa.chunked_array([pa.array([True] * n)])
    counts = {"rows": n, "ties": pc.sum(tie).as_py() or 0, "ties_dropped": 0, "below_min": 0}
    if drop_ties:
        keep = pc.and_(keep, pc.invert(tie))
        counts["ties_dropped"] = counts["ties"]
    if min_label_prob is not None:
        below = pc.and_(keep, pc.less(p, min_label_prob))
        counts["below_min"] = pc.sum(below).as_py() or 0
        keep = pc.and_(keep, pc.invert(below))
    kept = table.filter(keep)
    kp = p.filter(keep)
    counts["kept"] = kept.num_rows
    counts["ties_kept"] = pc.sum(pc.equal(kp, TIE_PROB)).as_py() or 0
    counts["soft"] = pc.sum(pc.and_(pc.not_equal(kp, 1.0), pc.not_equal(kp, TIE_PROB))).as_py() or 0
    counts["below_half"] = pc.sum(pc.less(kp, TIE_PROB)).as_py() or 0
    if "margin" in kept.column_names:
        counts["margins"] = pc.sum(pc.not_equal(pc.fill_null(kept.column("margin").cast(pa.float64()), 0.0),
                                                0.0)).as_py() or 0
    else:
        counts["margins"] = 0
    return kept, counts


def export(ref: str, out: str | Path, fmt: str = "conversational", split: str = "train", *,
           drop_ties: bool = False, min_label_prob: float | None = None) -> Path:
    """standard: TRL string columns; conversational: TRL message lists; jsonl/parquet: our schema.
    The file type follows `out`'s extension (.jsonl or .parquet). `drop_ties` / `min_label_prob` leave
    out pairs as `label_filter` does (TRL reads every pair as a hard preference)."""
    return export_counted(ref, out, fmt, split, drop_ties=drop_ties, min_label_prob=min_label_prob)[0]


def export_counted(ref: str, out: str | Path, fmt: str = "conversational", split: str = "train", *,
                   drop_ties: bool = False, min_label_prob: float | None = None) -> tuple[Path, dict]:
    """`export`, and the counts of `label_filter` (empty for a version that is not pairs)."""
    out = Path(out)
    _refuse_inside_store(out)
    if fmt not in TRL_FORMATS + ("jsonl", "parquet"):
        raise PrefdataError(f"unknown export format '{fmt}' (standard, conversational, jsonl, parquet)")
    v = resolve(ref)
    table = load_table(str(v.path), split)
    counts = {}
    if v.manifest.get("kind") == "pair":
        table, counts = label_filter(table, drop_ties=drop_ties, min_label_prob=min_label_prob)
    elif drop_ties or min_label_prob is not None:
        raise PrefdataError(f"{v.ref} is a '{v.manifest.get('kind')}' dataset; --drop-ties and --min-label-prob "
                            "filter pairs")
    if fmt in TRL_FORMATS:
        if v.manifest.get("kind") != "pair":
            raise PrefdataError(f"{v.ref} is a '{v.manifest.get('kind')}' dataset; TRL preference formats need pairs")
        df = pl.from_arrow(table.select(["prompt", "chosen", "rejected"]))
        if fmt == "standard":
            # TRL's standard format has plain strings; a multi-turn prompt keeps every turn, rendered
            # with role labels, so nothing is lost when the prompt is not a single user message.
            rendered = pl.col("prompt").list.eval(
                pl.concat_str([pl.element().struct.field("role"), pl.lit(": "), pl.element().struct.field("content")])
            ).list.join("\n\n")
            single = (pl.col("prompt").list.len() == 1) & (pl.col("prompt").list.first().struct.field("role") == "user")
            df = df.select(pl.when(single).then(_last_text("prompt")).otherwise(rendered).alias("prompt"),
                           _last_text("chosen").alias("chosen"), _last_text("rejected").alias("rejected"))
        table = df.to_arrow()
    from prefdata.writers import write

    write(table, out)
    return out, counts
