"""Checks on a table about to be committed: numeric values, and duplicate rows.

`store.commit` is reachable from Python with any Arrow table, not only through the readers, so it
re-applies the readers' numeric rules here (vectorised: a commit of 100k rows should not pay a
Python loop). A NaN margin that slips in trains a NaN model much later, far from its cause.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc

from prefdata.errors import DataError

# column -> (low, high) bounds besides finiteness; the same rules as prefdata.schema.check_row.
NUMERIC_RULES: dict[str, tuple[float | None, float | None]] = {
    "label_prob": (0.0, 1.0),
    "margin": (None, None),
    "chosen_score": (None, None),
    "rejected_score": (None, None),
    "strength_mean": (None, None),
    "strength_std": (None, None),
    "weight": (0.0, None),
}
LIST_RULES = ("votes",)
CONTENT_COLS = ("prompt", "chosen", "rejected", "completion", "label")


def _first_bad(values: pa.ChunkedArray, lo: float | None, hi: float | None) -> tuple[int, float] | None:
    a = pc.cast(values, pa.float64())
    bad = pc.invert(pc.is_finite(a))
    if lo is not None:
        bad = pc.or_(bad, pc.less(a, lo))
    if hi is not None:
        bad = pc.or_(bad, pc.greater(a, hi))
    i = pc.index(pc.fill_null(bad, False), True).as_py()
    return None if i < 0 else (i, a[i].as_py())


def _reason(v: float, lo, hi) -> str:
    if not math.isfinite(v):
        return "must be finite (got NaN or inf)"
    return f"must be within [{lo}, {hi}], got {v}"


def check_values(table: pa.Table, where: str) -> None:
    """Raise DataError naming the 1-based row and field of the first bad number (nulls are fine)."""
    for col, (lo, hi) in NUMERIC_RULES.items():
        if col in table.column_names and _is_number(table.schema.field(col).type):
            hit = _first_bad(table.column(col), lo, hi)
            if hit:
                raise DataError(_reason(hit[1], lo, hi), file=where, row=hit[0] + 1, field=col)
    for col in LIST_RULES:
        if col in table.column_names and pa.types.is_list(table.schema.field(col).type) \
                and _is_number(table.schema.field(col).type.value_type):
            arr = table.column(col).combine_chunks()
            hit = _first_bad(pa.chunked_array([pc.list_flatten(arr)]), None, None)
            if hit:
                row = pc.list_parent_indices(arr)[hit[0]].as_py()
                raise DataError(_reason(hit[1], None, None), file=where, row=row + 1, field=col)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)


# ----------------------------------------------------------------------------- duplicates


def _content_keys(table: pa.Table) -> list[str] | None:
    cols = [c for c in CONTENT_COLS if c in table.column_names]
    if not cols:
        return None
    data = table.select(cols).to_pylist()
    return [json.dumps(r, sort_keys=True, ensure_ascii=False, default=str) for r in data]


def _dup_mask(table: pa.Table, *, dropping: bool) -> tuple[list[bool], int, int]:
    """(is a repeat of an earlier row, #repeated ids, #repeated contents). When `dropping`, only
    kept rows count as earlier ones: a row whose only twin was itself dropped stays."""
    n = table.num_rows
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * n
    keys = _content_keys(table) or [None] * n
    seen_ids, seen_keys = set(), set()
    mask, dup_ids, dup_rows = [], 0, 0
    for i, k in zip(ids, keys):
        di = i is not None and i in seen_ids
        dk = k is not None and k in seen_keys
        dup_ids += di
        dup_rows += dk
        mask.append(di or dk)
        if not (dropping and (di or dk)):
            seen_ids.add(i)
            seen_keys.add(k)
    return mask, dup_ids, dup_rows


def duplicate_counts(table: pa.Table) -> dict[str, int]:
    """Rows repeating an earlier row's id, and rows repeating its content (prompt, chosen, rejected
    or completion); the card shows both."""
    _, dup_ids, dup_rows = _dup_mask(table, dropping=False)
    return {"ids": dup_ids, "rows": dup_rows}


def dedup(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the first of each id and of each content; return (table, rows dropped)."""
    mask, _, _ = _dup_mask(table, dropping=True)
    dropped = sum(mask)
    if not dropped:
        return table, 0
    return table.filter(pa.array([not m for m in mask])), dropped
