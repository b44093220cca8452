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


def export(ref: str, out: str | Path, fmt: str = "conversational", split: str = "train") -> Path:
    """standard: TRL string columns; conversational: TRL message lists; jsonl/parquet: our schema.
    The file type follows `out`'s extension (.jsonl or .parquet)."""
    out = Path(out)
    _refuse_inside_store(out)
    v = resolve(ref)
    table = load_table(str(v.path), split)
    if fmt in ("standard", "conversational"):
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
    elif fmt not in ("jsonl", "parquet"):
        raise PrefdataError(f"unknown export format '{fmt}' (standard, conversational, jsonl, parquet)")
    from prefdata.writers import write

    write(table, out)
    return out
