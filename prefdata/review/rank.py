"""The order in which pairs are offered: where a human label would change the most.

First the lowest posterior confidence |label_prob - 0.5|, then the strongest disagreement between
voter families (std of `votes`), then the stored order. A table without those columns (never
voted) falls back to stored order, so review also works on raw imports.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def vote_spread(table: pa.Table) -> np.ndarray:
    """Per-row population std of the `votes` list (0 where null, empty or absent), vectorised."""
    n = table.num_rows
    if "votes" not in table.column_names or n == 0:
        return np.zeros(n)
    arr = table.column("votes").combine_chunks()
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(float)
    if flat.size == 0:
        return np.zeros(n)
    parent = pc.list_parent_indices(arr).to_numpy()
    ok = np.isfinite(flat)  # a null inside a list arrives as NaN; it does not count
    count = np.bincount(parent[ok], minlength=n)
    total = np.bincount(parent[ok], weights=flat[ok], minlength=n)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    sq = np.bincount(parent[ok], weights=(flat[ok] - mean[parent[ok]]) ** 2, minlength=n)
    return np.sqrt(np.divide(sq, count, out=np.zeros(n), where=count > 0))


def confidence(table: pa.Table) -> np.ndarray:
    """|label_prob - 0.5| per row; rows (or tables) without a label_prob count as fully uncertain
    ties with each other, so the spread and then the stored order decide among them."""
    n = table.num_rows
    if "label_prob" not in table.column_names:
        return np.zeros(n)
    p = pc.cast(table.column("label_prob"), pa.float64()).to_numpy(zero_copy_only=False).astype(float)
    return np.where(np.isfinite(p), np.abs(p - 0.5), 0.0)


def priority(table: pa.Table) -> list[str]:
    """Unique pair ids, most in need of a human first. Repeated ids (the same content twice) are
    offered once; a decision applies to every row with that id."""
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    order = np.lexsort((np.arange(len(ids)), -vote_spread(table), confidence(table)))
    _, first = np.unique(ids[order].astype(str), return_index=True)
    return [str(i) for i in ids[order][np.sort(first)]]
