"""File writers by extension. A leaf (errors only): io reads store refs, and the store exports
through these writers, so keeping them out of io keeps io and store from importing each other."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from prefdata.errors import PrefdataError

# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """OWASP's rule for CSV cells: one that starts like a formula gets a leading single quote, which
    spreadsheets show as text and never run."""
    return "'" + text if text.startswith(FORMULA_START) else text


def _no_formulas(df):
    """Every text cell and every column name of `df` through `neutralise`; numbers stay numbers
    (a spreadsheet reads -1.5 as a number, never as a formula)."""
    import polars as pl

    pattern = "^[" + "".join("\\" + c if c in "-+" else c for c in FORMULA_START) + "]"
    text = [c for c, t in df.schema.items() if t in (pl.String, pl.Categorical) or isinstance(t, pl.Enum)]
    df = df.with_columns([pl.when(pl.col(c).cast(pl.String).str.contains(pattern))
                          .then(pl.lit("'") + pl.col(c).cast(pl.String))
                          .otherwise(pl.col(c).cast(pl.String)).alias(c) for c in text])
    return df.rename({c: neutralise(c) for c in df.columns if neutralise(c) != c})


def write(table: pa.Table, path: str | Path) -> Path:
    """Write by extension (.jsonl, .parquet, .csv); atomic, so a crash leaves no half file. In a
    .csv, cells and column names that a spreadsheet would run as a formula start with a single
    quote (`neutralise`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        elif name.endswith(".jsonl"):
            with open(tmp, "w", encoding="utf-8") as f:
                for r in table.to_pylist():
                    f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        elif name.endswith(".csv"):
            import polars as pl

            df = pl.from_arrow(table)
            nested = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Struct))]
            df = df.with_columns([pl.Series(c, [None if v is None else json.dumps(v, ensure_ascii=False)
                                                for v in df[c].to_list()], dtype=pl.String)
                                  for c in nested])
            df = _no_formulas(df)
            df.write_csv(tmp)
        else:
            raise PrefdataError(f"{path}: unknown output type (use .jsonl, .parquet or .csv)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
