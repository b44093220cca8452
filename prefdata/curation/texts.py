"""Pairs as plain text keys, for matching and counting without a Python loop over rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from prefdata.rewards.features import pair_texts


def match_gold(table: pa.Table, gold: pa.Table) -> np.ndarray:
    """Per pair of `table`: 1 if `gold` holds the same pair with the same chosen side, 0 if swapped,
    NaN if absent. Pairs are matched by prompt and the unordered two answers."""
    key = lambda df: df.with_columns(pl.concat_str([pl.col("p"), pl.min_horizontal("c", "r"),
                                                    pl.max_horizontal("c", "r")], separator="\x1e").alias("k"))
    t = key(pair_texts(table)).with_row_index("i")
    g = key(pair_texts(gold)).unique("k", keep="first").select("k", pl.col("c").alias("gc"))
    j = t.join(g, on="k", how="left").sort("i")
    return j.select(pl.when(pl.col("gc").is_null()).then(None).otherwise((pl.col("gc") == pl.col("c")).cast(pl.Float64))
                    ).to_series().to_numpy().astype(np.float64)


def duplicate_pairs(table: pa.Table) -> dict[str, int]:
    """Exact duplicates (same prompt, chosen and rejected as an earlier pair) and swapped duplicates
    (same prompt, the two answers in the other order: a direct label conflict)."""
    t = pair_texts(table)
    exact = t.height - t.unique(["p", "c", "r"]).height
    forward = t.unique(["p", "c", "r"]).select("p", "c", "r")
    backward = forward.select("p", pl.col("r").alias("c"), pl.col("c").alias("r"))
    swapped = forward.join(backward, on=["p", "c", "r"], how="semi").height // 2
    return {"exact": exact, "swapped": swapped}
