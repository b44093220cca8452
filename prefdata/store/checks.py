"""Checks on a table about to be committed: numeric values, and duplicate rows.

`store.commit` is reachable from Python with any Arrow table, not only through the readers, so it
re-applies the readers' numeric rules here (vectorised: a commit of 100k rows should not pay a
Python loop). A NaN margin that slips in trains a NaN model much later, far from its cause.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
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


def check_values(table: pa.Table, where: str, offset: int = 0) -> None:
    """Raise DataError naming the 1-based row and field of the first bad number (nulls are fine);
    `offset` is the rows before this table when it is one shard of a longer split."""
    for col, (lo, hi) in NUMERIC_RULES.items():
        if col in table.column_names and _is_number(table.schema.field(col).type):
            hit = _first_bad(table.column(col), lo, hi)
            if hit:
                raise DataError(_reason(hit[1], lo, hi), file=where, row=offset + hit[0] + 1, field=col)
    for col in LIST_RULES:
        if col in table.column_names and pa.types.is_list(table.schema.field(col).type) \
                and _is_number(table.schema.field(col).type.value_type):
            arr = table.column(col).combine_chunks()
            hit = _first_bad(pa.chunked_array([pc.list_flatten(arr)]), None, None)
            if hit:
                row = pc.list_parent_indices(arr)[hit[0]].as_py()
                raise DataError(_reason(hit[1], None, None), file=where, row=offset + row + 1, field=col)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)


# ----------------------------------------------------------------------------- duplicates


def _content_keys(table: pa.Table) -> list[str] | None:
    cols = [c for c in CONTENT_COLS if c in table.column_names]
    if not cols:
        return None
    data = table.select(cols).to_pylist()
    return [json.dumps(r, sort_keys=True, ensure_ascii=False, default=str) for r in data]


def _hash64(values: list) -> np.ndarray:
    """64-bit digests (0 stands for null); a collision among a million rows has odds near 1e-8."""
    out = np.zeros(len(values), dtype=np.uint64)
    for j, v in enumerate(values):
        if v is not None:
            out[j] = int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") | 1
    return out


def row_keys(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(id digests, content digests) per row, 0 where a row has no id or no content columns."""
    n = table.num_rows
    ids = _hash64(table.column("id").to_pylist()) if "id" in table.column_names else np.zeros(n, np.uint64)
    keys = _content_keys(table)
    return ids, (_hash64(keys) if keys is not None else np.zeros(n, np.uint64))


class Deduper:
    """Keeps the first of each id and of each content across the tables it is given in order, so a
    split deduplicated shard by shard equals the split deduplicated whole. Only kept rows count as
    earlier ones: a row whose only twin was itself dropped stays."""

    def __init__(self):
        self._ids: set[int] = set()
        self._keys: set[int] = set()

    def filter(self, table: pa.Table) -> tuple[pa.Table, int]:
        ids, keys = row_keys(table)
        keep = np.ones(table.num_rows, dtype=bool)
        for j, (i, k) in enumerate(zip(ids.tolist(), keys.tolist())):
            if (i and i in self._ids) or (k and k in self._keys):
                keep[j] = False
                continue
            self._ids.add(i)
            self._keys.add(k)
        dropped = int((~keep).sum())
        return (table.filter(pa.array(keep)) if dropped else table), dropped


class DuplicateCounter:
    """`duplicate_counts` over a split given in shards: digests are kept (16 bytes a row), the
    counting is one vectorised pass at the end."""

    def __init__(self):
        self._ids: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []

    def add(self, table: pa.Table) -> None:
        ids, keys = row_keys(table)
        self._ids.append(ids)
        self._keys.append(keys)

    def counts(self) -> dict[str, int]:
        def repeats(parts: list[np.ndarray]) -> int:
            a = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
            a = a[a != 0]
            return int(a.size - np.unique(a).size)

        return {"ids": repeats(self._ids), "rows": repeats(self._keys)}


def duplicate_counts(table: pa.Table) -> dict[str, int]:
    """Rows repeating an earlier row's id, and rows repeating its content (prompt, chosen, rejected
    or completion); the card shows both."""
    c = DuplicateCounter()
    c.add(table)
    return c.counts()


def dedup(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the first of each id and of each content; return (table, rows dropped)."""
    return Deduper().filter(table)
