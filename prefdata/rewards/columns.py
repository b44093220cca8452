"""Votes computed elsewhere, read from columns: judge verdicts, reward-model scores, human annotators.

    voters:
      - {type: column, family: gpt4, columns: [gpt4_vanilla_ab, gpt4_vanilla_ba], kind: verdict}
      - {type: column, family: rm-70b, columns: [rm_chosen, rm_rejected], kind: scores}
      - {type: column, family: team, columns: [annotator1, annotator2, annotator3], kind: verdict}

Every column of one `family` is one member of one annotator in the posterior (`curation.posterior`):
one judge under several prompts, one judge shown both orders (list both: position bias cancels in the
family's mean), or one labelling team. Kinds, each read into the chosen side's orientation:
- `verdict`: +1 (chosen is better), -1 (rejected is better), 0 (tie), null (no vote); any number in
  [-1, 1] is taken as a graded verdict;
- `score`: a continuous margin for chosen over rejected (a reward-model difference); null is no vote;
- `scores`: per-answer scores, the columns read as (chosen, rejected) pairs: [c1, r1, c2, r2, ...];
- `ab`: "A" / "B" / "tie" about a recorded order: `order` names the column(s) saying which answer was
  shown as A ("chosen" / "rejected", or true when chosen was A), one per verdict column or one for all.

`source` reads the columns from a side file (JSONL, JSON, CSV, Parquet) or another store version
instead of the dataset, joined by pair `id`, or by prompt and both answers in either order (`join:
text`; a side row that lists the answers the other way round has its votes turned around). A pair the
side file lacks is a missing vote, never an error.

Flipping a pair (`curation.policies.flip`, the noise injection of `eval noise`) turns these columns
around with it (`flip_exprs`), so a cleaned version can be voted on again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.errors import ConfigError, DataError

_A, _B, _TIE = {"a", "1"}, {"b", "2"}, {"tie", "0", "same", "draw"}


class ColumnVoter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["column"] = "column"
    family: str = Field(..., min_length=1, pattern=r"^[^:\s][^:]*$",
                        description="The annotator these columns belong to; columns sharing a family are averaged "
                        "into one vote (one judge under several prompts or orders counts once). No ':'.")
    columns: list[str] = Field(..., min_length=1, description="Columns holding the votes (see `kind`).")
    kind: Literal["verdict", "score", "scores", "ab"] = Field(
        "verdict", description="verdict: +1/-1/0/null about chosen; score: a margin for chosen; scores: (chosen, "
        "rejected) column pairs; ab: 'A'/'B'/'tie' about the order in `order`.")
    order: str | list[str] | None = Field(None, description="kind ab: column(s) naming the answer shown as A "
                                          "('chosen'/'rejected', or true when chosen was A); one per column or one for all.")
    source: str | None = Field(None, description="Side file or store ref holding the columns, joined to the "
                               "dataset's pairs; a pair it lacks is a missing vote.")
    join: Literal["auto", "id", "text"] = Field("auto", description="How side rows meet pairs: id, or text (prompt and "
                                                "both answers, either order); auto picks text when the side has them.")

    @model_validator(mode="after")
    def _shape(self):
        if self.kind == "scores" and len(self.columns) % 2:
            raise ValueError("kind 'scores' reads columns as (chosen, rejected) pairs: give an even number")
        if self.kind == "ab":
            if self.order is None:
                raise ValueError("kind 'ab' needs `order`: the column saying which answer was shown as A")
            if isinstance(self.order, list) and len(self.order) not in (1, len(self.columns)):
                raise ValueError("`order` must name one column, or one per verdict column")
        elif self.order is not None:
            raise ValueError("`order` applies to kind 'ab' only")
        return self

    @property
    def posterior_kind(self) -> str:
        return "verdict" if self.kind in ("verdict", "ab") else "score"

    def order_columns(self) -> list[str]:
        if self.order is None:
            return []
        o = [self.order] if isinstance(self.order, str) else self.order
        return o * len(self.columns) if len(o) == 1 else o


# ----------------------------------------------------------------------------- reading values


def _where(source: str, i: int, col: str) -> dict:
    return {"file": source, "row": int(i) + 1, "field": col}


def _numbers(s: pl.Series, source: str, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A column as floats (null -> NaN), or one DataError naming the first bad row."""
    if s.dtype == pl.Boolean or s.dtype == pl.String or not s.dtype.is_numeric() and s.dtype != pl.Null:
        bad = int(s.is_not_null().arg_max() or 0)
        raise DataError(f"expected a number, got {s[bad]!r}", **_where(source, bad, s.name))
    a = s.cast(pl.Float64).to_numpy().astype(np.float64)
    a = np.where(np.isnan(a), np.nan, a)
    bad = np.flatnonzero(np.isinf(a) | (np.isfinite(a) & (lo is not None) & (a < (lo or 0)))
                         | (np.isfinite(a) & (hi is not None) & (a > (hi or 0))))
    if bad.size:
        rng = f" in [{lo:g}, {hi:g}]" if lo is not None else " (finite)"
        raise DataError(f"expected a number{rng}, got {a[bad[0]]}", **_where(source, bad[0], s.name))
    return a


def _ab(s: pl.Series, order: pl.Series, source: str) -> np.ndarray:
    """'A'/'B'/'tie' about the order column -> +1/-1/0/NaN for chosen."""
    v = s.cast(pl.String).str.strip_chars().str.to_lowercase()
    known = v.is_null() | v.is_in(list(_A | _B | _TIE))
    if not known.all():
        bad = int((~known).arg_max())
        raise DataError(f"expected 'A', 'B' or 'tie', got {s[bad]!r}", **_where(source, bad, s.name))
    isin = lambda ser, vals: ser.is_in(list(vals)).fill_null(False).to_numpy()  # noqa: E731
    if order.dtype == pl.Boolean:
        ca = order.cast(pl.Float64).to_numpy().astype(np.float64)  # 1 / 0 / NaN
    else:
        o = order.cast(pl.String).str.strip_chars().str.to_lowercase()
        ok = o.is_null() | o.is_in(["chosen", "rejected", "true", "false"])
        if not ok.all():
            bad = int((~ok).arg_max())
            raise DataError(f"expected 'chosen' or 'rejected' (the answer shown as A), got {order[bad]!r}",
                            **_where(source, bad, order.name))
        ca = np.where(o.is_null().to_numpy(), np.nan, isin(o, ("chosen", "true")).astype(np.float64))
    sign = np.where(isin(v, _A), 1.0, np.where(isin(v, _B), -1.0, 0.0)) * (2 * ca - 1)  # NaN: order unknown
    sign = np.where(v.is_null().to_numpy(), np.nan, sign)
    return np.where(isin(v, _TIE) & np.isfinite(ca), 0.0, sign)


def _flatten(df: pl.DataFrame) -> pl.DataFrame:
    """Struct columns become dotted columns (`judges.gpt-4`), so nested verdicts can be named."""
    while any(dt == pl.Struct for dt in df.schema.values()):
        cols = []
        for name, dt in df.schema.items():
            if dt == pl.Struct:
                cols += [pl.col(name).struct.field(f.name).alias(f"{name}.{f.name}") for f in dt.fields]
            else:
                cols.append(pl.col(name))
        df = df.select(cols)
    return df


def _read_side(source: str) -> pl.DataFrame:
    return _flatten(_read_side_raw(source))


def _read_side_raw(source: str) -> pl.DataFrame:
    p = Path(source)
    if not p.exists():
        from prefdata import store

        try:
            return pl.from_arrow(store.load_table(source))
        except Exception as e:  # noqa: BLE001 - a ref that does not resolve is the user's input
            raise ConfigError(f"vote source '{source}': not a file, and not a store ref ({' '.join(str(e).split())})") from None
    name = p.name.lower().removesuffix(".gz")
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(p)
        if name.endswith(".csv"):
            return pl.read_csv(p, infer_schema_length=None)
        if name.endswith(".jsonl"):
            return pl.read_ndjson(p, infer_schema_length=None)
        if name.endswith(".json"):
            return pl.read_json(p, infer_schema_length=None)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read votes: {' '.join(str(e).split())[:200]}", file=source) from None
    raise ConfigError(f"vote source '{source}': use a .jsonl, .json, .csv or .parquet file (optionally .gz) or a store ref")


def _text_key(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.concat_str([pl.col("p"), pl.min_horizontal("c", "r"), pl.max_horizontal("c", "r")],
                                         separator="\x1e").alias("_k"))


def _side_columns(table: pa.Table, spec: ColumnVoter) -> tuple[pl.DataFrame, np.ndarray, str]:
    """The side file's vote columns aligned to the dataset's pairs (null rows where absent) and, per
    pair, whether the side row lists the answers the other way round."""
    from prefdata.rewards.features import pair_texts

    side = _read_side(spec.source)
    # An `ab` order column may live in the dataset (the order this dataset's pairs were shown in).
    local = [o for o in dict.fromkeys(spec.order_columns()) if o not in side.columns and o in table.column_names]
    need = [c for c in dict.fromkeys(spec.columns + spec.order_columns()) if c not in local]
    missing = [c for c in need if c not in side.columns]
    if missing:
        raise DataError(f"column '{missing[0]}' is not in the vote source", file=spec.source, field=missing[0])
    has_text = {"prompt", "chosen", "rejected"} <= set(side.columns)
    how = spec.join if spec.join != "auto" else ("text" if has_text else "id")
    n = table.num_rows
    if how == "id":
        if "id" not in side.columns:
            raise DataError("the vote source has no 'id' column to join on (or give prompt, chosen and rejected)",
                            file=spec.source, field="id")
        ids = pl.DataFrame({"id": table.column("id").to_pylist()}).with_row_index("_i")
        j = ids.join(side.select(pl.col("id").cast(pl.String), *need).unique("id", keep="first"), on="id", how="left")
        return j.sort("_i").select(need).with_columns(_local(table, local)), np.zeros(n, bool), how
    if not has_text:
        raise DataError("join: text needs prompt, chosen and rejected in the vote source", file=spec.source)
    from prefdata import io
    from prefdata.schema import conform

    side_pairs = conform(io.read(spec.source, "pair"), "pair") if Path(spec.source).exists() else \
        conform(side.to_arrow(), "pair")
    sp = pl.from_arrow(side_pairs.select(need))
    st = _text_key(pair_texts(side_pairs)).with_columns(sp).with_row_index("_s").unique("_k", keep="first")
    t = _text_key(pair_texts(table)).with_row_index("_i")
    j = t.join(st.select("_k", pl.col("c").alias("_sc"), *need), on="_k", how="left").sort("_i")
    reversed_ = (j["_sc"].is_not_null() & (j["_sc"] != j["c"])).to_numpy()
    return j.select(need).with_columns(_local(table, local)), reversed_, how


def _local(table: pa.Table, names: list[str]) -> list[pl.Series]:
    return [pl.from_arrow(table.select([c])).to_series() for c in names]


def column_votes(table: pa.Table, spec: ColumnVoter, source: str = "dataset") -> dict[str, np.ndarray]:
    """{f"{family}:{j}": (n,) votes for chosen, NaN where missing}: one entry per member."""
    if spec.source is not None:
        frame, reversed_, _ = _side_columns(table, spec)
        where = spec.source
    else:
        need = list(dict.fromkeys(spec.columns + spec.order_columns()))
        absent = [c for c in need if c not in table.column_names]
        if absent:
            raise DataError(f"vote column '{absent[0]}' (family '{spec.family}') is not in the dataset",
                            file=source, field=absent[0])
        frame, reversed_, where = pl.from_arrow(table.select(need)), np.zeros(table.num_rows, bool), source
    turn = np.where(reversed_, -1.0, 1.0)
    out: dict[str, np.ndarray] = {}
    if spec.kind == "scores":
        for j in range(0, len(spec.columns), 2):
            c, r = (_numbers(frame[x], where) for x in spec.columns[j:j + 2])
            out[f"{spec.family}:{j // 2}"] = (c - r) * turn
        return out
    orders = spec.order_columns()
    for j, col in enumerate(spec.columns):
        if spec.kind == "ab":
            v = _ab(frame[col], frame[orders[j]], where)
        else:
            v = _numbers(frame[col], where, *((-1.0, 1.0) if spec.kind == "verdict" else (None, None)))
        out[f"{spec.family}:{j}"] = v * turn
    return out


def flip_exprs(specs, columns: dict, when: pl.Expr) -> list[pl.Expr]:
    """Expressions that turn the dataset's own vote columns around where `when` holds (a flipped pair):
    verdicts and scores negate, (chosen, rejected) score columns swap, an `ab` order column names the
    other answer. Columns from a side file are left alone (the join re-orients them)."""
    exprs: dict[str, pl.Expr] = {}
    for spec in specs:
        if not isinstance(spec, ColumnVoter) or spec.source is not None:
            continue
        if spec.kind in ("verdict", "score"):
            for c in spec.columns:
                if c in columns:
                    exprs[c] = pl.when(when).then(-pl.col(c)).otherwise(pl.col(c)).alias(c)
        elif spec.kind == "scores":
            for c, r in zip(spec.columns[0::2], spec.columns[1::2]):
                if c in columns and r in columns:
                    exprs[c] = pl.when(when).then(pl.col(r)).otherwise(pl.col(c)).alias(c)
                    exprs[r] = pl.when(when).then(pl.col(c)).otherwise(pl.col(r)).alias(r)
        else:
            for o in dict.fromkeys(spec.order_columns()):
                if o in columns:
                    exprs[o] = _toggle_order(o, when, columns[o] == pl.Boolean)
    return list(exprs.values())


def _toggle_order(o: str, when: pl.Expr, boolean: bool) -> pl.Expr:
    col = pl.col(o)
    if boolean:
        return pl.when(when).then(~col).otherwise(col).alias(o)
    as_text = col.cast(pl.String).str.strip_chars().str.to_lowercase()
    other = (pl.when(as_text == "chosen").then(pl.lit("rejected")).when(as_text == "rejected").then(pl.lit("chosen"))
             .when(as_text == "true").then(pl.lit("false")).when(as_text == "false").then(pl.lit("true"))
             .otherwise(col.cast(pl.String)))
    return pl.when(when).then(other).otherwise(col.cast(pl.String)).alias(o)
