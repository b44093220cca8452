"""Readers and writers: files in, schema-valid Arrow tables out.

One entry point, `read(source)`, for JSONL(.gz), Parquet, CSV, a local HF `datasets` folder and a
store ref. Whatever the layout of the rows (HH-RLHF transcripts, TRL standard, conversational or
implicit-prompt preference rows, KTO rows, prompt sets), they come out in our schema. Errors name
the file, the 1-based line or row and the field.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io as pyio
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from prefdata.errors import DataError, PrefdataError
from prefdata.schema import (
    EMPTY_ANSWER,
    SCHEMAS,
    RowError,
    _write_quarantine,
    already_valid,
    check_arguments,
    check_rows,
    to_table,
    validate,
)
from prefdata.writers import write  # noqa: F401  (io.write, kept where callers expect it)

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


# ----------------------------------------------------------------------------- HH-RLHF transcripts


def hh_to_messages(text: str) -> list[dict]:
    """"\\n\\nHuman: … \\n\\nAssistant: …" → chat messages. Text before the first marker is dropped
    only if it is whitespace; otherwise the transcript is malformed."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("(transcript)", "text before the first 'Human:' turn")
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if not msgs:
        raise RowError("(transcript)", "no 'Human:'/'Assistant:' turns found")
    return msgs


def split_hh_pair(chosen_text: str, rejected_text: str, allow_empty: tuple[str, ...] = ()
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """Two full transcripts sharing every turn but the last → (prompt, chosen, rejected). A side in
    `allow_empty` may end in an empty "Assistant:" turn (see `read(allow_empty=...)`)."""
    try:
        c = hh_to_messages(chosen_text)
    except RowError as e:
        raise RowError("chosen", e.reason) from None
    try:
        r = hh_to_messages(rejected_text)
    except RowError as e:
        raise RowError("rejected", e.reason) from None
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or c[:-1] != r[:-1]:
        marked = _marker_in_answer(chosen_text, rejected_text)
        if marked:  # the usual cause in real dumps: an answer that quotes a dialogue
            field, marker = marked
            raise RowError(field, f"the final answer itself contains a '{marker}' turn marker, so the "
                                  "transcript cannot be split into turns")
    if c[-1]["role"] != "assistant":
        raise RowError("chosen", "transcript does not end with an Assistant turn")
    if r[-1]["role"] != "assistant":
        raise RowError("rejected", "transcript does not end with an Assistant turn")
    if c[:-1] != r[:-1]:
        raise RowError("rejected", "chosen and rejected transcripts differ before the last assistant turn")
    prompt = c[:-1]
    if not prompt:
        raise RowError("prompt", "no turns before the final assistant turn")
    return prompt, [_nonempty(c[-1], "chosen", allow_empty)], [_nonempty(r[-1], "rejected", allow_empty)]


def _marker_in_answer(chosen_text: str, rejected_text: str) -> tuple[str, str] | None:
    """(field, marker) when the two transcripts agree up to a last "Assistant:" marker and what follows
    it in one of them holds another turn marker: that answer, not the dialogue, is malformed."""
    shared = len(os.path.commonprefix([chosen_text, rejected_text]))
    starts = [m for m in _HH_TURN.finditer(chosen_text) if m.group(1) == "Assistant" and m.end() <= shared]
    if not starts:
        return None
    cut = starts[-1].end()
    for field, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        inner = _HH_TURN.search(text, cut)
        if inner:
            return field, f"\\n\\n{inner.group(1)}:"
    return None


def _nonempty(m: dict, field: str, allow_empty: tuple[str, ...] = ()) -> dict:
    if not m["content"] and field not in allow_empty:
        raise RowError(f"{field}[0].content", "empty message content (allow_empty: "
                                              f"{field} keeps such pairs)")
    return m


def _is_hh(text) -> bool:
    return isinstance(text, str) and "\n\nHuman:" in text and "\n\nAssistant:" in text


# ----------------------------------------------------------------------------- row layouts


def infer_kind(columns) -> str:
    cols = set(columns)
    if cols & {"chosen", "rejected"}:  # one of them missing is a bad pair, not a prompt
        return "pair"
    if {"completion", "label"} <= cols:
        return "unpaired"
    if "completion" in cols:
        return "completion"
    return "prompt"


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def normalise_row(row: dict, kind: str, allow_empty: tuple[str, ...] = ()) -> dict:
    """Map a row from any accepted layout onto our field names (types are checked later). A pair side
    in `allow_empty` that is empty becomes the `EMPTY_ANSWER` (check it with `empty_ok=allow_empty`)."""
    row = dict(row)
    if kind == "pair":
        c, r = row.get("chosen"), row.get("rejected")
        if row.get("prompt") is None and _is_hh(c) and _is_hh(r):
            row["prompt"], row["chosen"], row["rejected"] = split_hh_pair(c, r, allow_empty)
        elif row.get("prompt") is None and isinstance(c, list) and isinstance(r, list) and c and r:
            # TRL implicit prompt: the shared leading turns are the prompt.
            n = _common_prefix(c, r)
            row["prompt"], row["chosen"], row["rejected"] = c[:n], c[n:], r[n:]
        elif isinstance(row.get("prompt"), list):
            p = row["prompt"]
            for f in ("chosen", "rejected"):
                v = row.get(f)
                if isinstance(v, list) and len(v) > len(p) and v[: len(p)] == p:
                    row[f] = v[len(p):]  # conversational rows that repeat the prompt
    if kind in ("prompt", "completion", "unpaired") and row.get("prompt") is None \
            and isinstance(row.get("instruction"), str) and row["instruction"]:
        # Self-Instruct / Alpaca style: instruction plus an optional input.
        inp = row.get("input")
        if inp is None and isinstance(row.get("instances"), list) and row["instances"]:
            first = row["instances"][0]
            inp = first.get("input") if isinstance(first, dict) else None
        row["prompt"] = row["instruction"] + (f"\n\n{inp}" if isinstance(inp, str) and inp.strip() else "")
    if kind == "pair":
        for f in allow_empty:
            if _is_empty_answer(row.get(f)):
                row[f] = [dict(m) for m in EMPTY_ANSWER]
    return row


# ----------------------------------------------------------------------------- empty answers kept on request

# The schema refuses an empty message, and rightly by default. When the user keeps empty answers, an
# empty side becomes the schema's EMPTY_ANSWER (one assistant turn, content ""), which the row check
# then accepts for that side only.
ALLOW_EMPTY = {"none": (), "chosen": ("chosen",), "rejected": ("rejected",), "both": ("chosen", "rejected")}


def _is_empty_answer(v) -> bool:
    """A side with no text: a blank string, [] or messages whose contents are all blank. A missing
    side (null) is not empty: it stays an error."""
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, list):
        return all(isinstance(m, dict) and isinstance(m.get("content"), str) and not m["content"].strip()
                   for m in v)
    return False


def allow_empty_sides(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if value not in ALLOW_EMPTY:
        raise PrefdataError(f"allow_empty must be one of {', '.join(ALLOW_EMPTY)}, got '{value}'")
    return ALLOW_EMPTY[value]


# ----------------------------------------------------------------------------- file formats


def _parse_json(text: str, path: Path, row: int | None):
    """json.loads, with every way it can fail turned into one DataError line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f" at column {e.colno}" if row is not None else f" at line {e.lineno}, column {e.colno}"
        raise DataError(f"malformed JSON ({e.msg}{where})", file=str(path), row=row) from None
    except RecursionError:
        raise DataError("JSON nested too deeply to read", file=str(path), row=row) from None
    except ValueError as e:  # e.g. an integer literal over Python's 4300-digit limit
        raise DataError(f"malformed JSON ({str(e).splitlines()[0]})", file=str(path), row=row) from None


def _gzip_error(e: Exception, path: Path, row: int) -> DataError:
    if isinstance(e, gzip.BadGzipFile) or (isinstance(e, OSError) and "gzip" in str(e).lower()):
        return DataError(f"not a gzip file, though named .gz ({e})", file=str(path))
    # EOFError: the stream stops mid-member; zlib.error: corrupt data. Both mean a damaged download.
    return DataError(f"truncated or corrupt gzip data after line {row - 1} ({e})", file=str(path), row=row)


def _lines(path: Path):
    """(1-based line number, raw bytes) of a plain or gzip file; gzip damage becomes a DataError."""
    if path.suffix != ".gz":
        with open(path, "rb") as f:
            yield from enumerate(f, start=1)
        return
    n = 1
    try:
        with gzip.open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                yield n, raw
            n += 1
    except (EOFError, OSError, zlib.error) as e:
        raise _gzip_error(e, path, n) from None


def _jsonl_objects(path: Path):
    """(1-based line number, object) for each non-blank line; the first bad line is a DataError."""
    for n, raw in _lines(path):
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]  # editors on Windows write one; it is not data
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"invalid UTF-8 at byte {e.start}", file=str(path), row=n) from None
        if not line.strip():
            continue
        obj = _parse_json(line, path, n)
        if not isinstance(obj, dict):
            raise DataError(f"each line must be a JSON object, got {_json_type(obj)}", file=str(path), row=n)
        yield n, obj


def _jsonl_rows(path: Path, batch_rows: int) -> _Rows:
    """Two passes when the file is longer than one batch: the first parses every line (so a malformed
    line anywhere fails before any row is validated, as it always has) and collects the keys the kind
    is inferred from; the second parses again a batch at a time. Parsing twice costs less than
    holding every row as a dict (about 1 KiB each for a short prompt)."""
    keys: set = set()
    head, count = [], 0
    for n, obj in _jsonl_objects(path):
        keys.update(obj)
        count += 1
        if count <= batch_rows:
            head.append((n, obj))

    def batches():
        if count <= batch_rows:
            yield [o for _, o in head], [n for n, _ in head]
            return
        head.clear()
        yield from _chunked(_jsonl_objects(path), batch_rows)

    return _Rows(str(path), False, count, keys, head[0][1] if head else None, batches)


def _chunked(numbered, size: int):
    rows, numbers = [], []
    for n, obj in numbered:
        rows.append(obj)
        numbers.append(n)
        if len(rows) == size:
            yield rows, numbers
            rows, numbers = [], []
    if rows:
        yield rows, numbers


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def _json_array_rows(path: Path, batch_rows: int) -> _Rows:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a leading BOM is dropped
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 at byte {e.start}", file=str(path), row=line) from None
    data = _parse_json(text, path, None)
    del raw, text
    if isinstance(data, dict):  # {"data": [...]} wrappers are common
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        return _jsonl_rows(path, batch_rows)
    keys: set = set()
    for i, r in enumerate(data, start=1):
        if not isinstance(r, dict):  # `[1, 2, 3]`: say so here, before the layout is guessed from row 1
            raise DataError(f"each array element must be a JSON object, got {_json_type(r)}",
                            file=str(path), row=i)
        keys.update(r)
    # One JSON document is parsed whole anyway; only the checking and conversion go a batch at a time.
    return _Rows(str(path), False, len(data), keys, data[0] if data else None,
                 lambda: _chunked(enumerate(data, start=1), batch_rows))


_CSV_MESSAGE_COLS = ("prompt", "chosen", "rejected", "completion", "votes")
_CSV_BOOL_COLS = ("label", "flipped")
_CSV_FLOAT_COLS = ("label_prob", "margin", "weight", "chosen_score", "rejected_score")


def _csv_records(path: Path):
    """(first line of the record, header, cells) for each non-blank record. Python's csv module, not
    polars, because a quoted cell may span lines and errors must name the file's line, not the
    record's index."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 at byte {e.start}", file=str(path), row=line) from None
    reader = csv.reader(pyio.StringIO(text, newline=""))
    header = None
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"cannot parse CSV: {e}", file=str(path), row=start) from None
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            dup = next((c for c in header if header.count(c) > 1), None)
            if dup is not None:
                raise DataError(f"column '{dup}' appears twice in the header", file=str(path), row=start)
            continue
        if len(cells) > len(header):
            raise DataError(f"{len(cells)} cells but the header names {len(header)} columns",
                            file=str(path), row=start)
        yield start, header, cells


def _csv_row(header: list[str], cells: list[str]) -> dict:
    r = dict(zip(header, cells + [""] * (len(header) - len(cells))))
    for k, v in list(r.items()):
        if v == "":
            r[k] = None  # an empty cell is a missing value, not an empty string
        elif k in _CSV_MESSAGE_COLS and v.lstrip().startswith("["):
            try:
                r[k] = json.loads(v)  # a message list serialised into a cell
            except (ValueError, RecursionError):
                pass  # kept as text; the schema check then says what is wrong with it
        elif k in _CSV_BOOL_COLS and v.lower() in ("true", "false", "1", "0"):
            r[k] = v.lower() in ("true", "1")
        elif k in _CSV_FLOAT_COLS:
            try:
                r[k] = float(v) if v.strip() else None
            except ValueError:
                pass
    return r


def _csv_rows(path: Path, batch_rows: int) -> _Rows:
    """A first pass checks every record's shape (a CSV error anywhere fails before any row is
    validated) and counts them; every row has the header's keys, so the kind is the header's."""
    header, count, first = [], 0, None
    for _, header, cells in _csv_records(path):
        count += 1
        if first is None:
            first = _csv_row(header, cells)
    return _Rows(str(path), False, count, set(header), first,
                 lambda: _chunked(((line, _csv_row(h, cells)) for line, h, cells in _csv_records(path)), batch_rows))


def _table_rows(table: pa.Table, label: str, from_store: bool, batch_rows: int) -> _Rows:
    """An Arrow table (Parquet, a store version) is compact; its rows become dicts a batch at a time.
    Errors name the 1-based row."""

    def batches():
        for start in range(0, table.num_rows, batch_rows):
            rows = table.slice(start, batch_rows).to_pylist()
            yield rows, list(range(start + 1, start + 1 + len(rows)))

    first = table.slice(0, 1).to_pylist()
    return _Rows(label, from_store, table.num_rows, set(table.column_names), first[0] if first else None, batches,
                 table if from_store else None)


def _hf_rows(path: Path, batch_rows: int) -> _Rows:
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise PrefdataError(f"{path}: not a dataset folder ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    cols = ds.column_names

    def batches():
        for start in range(0, len(ds), batch_rows):
            part = ds[start:start + batch_rows]  # column -> values, decoded as ds.to_list() decodes them
            rows = [dict(zip(cols, values)) for values in zip(*(part[c] for c in cols))]
            yield rows, list(range(start + 1, start + 1 + len(rows)))

    first = ds[0] if len(ds) else None
    return _Rows(str(path), False, len(ds), set(cols), first, batches)


@dataclass
class _Rows:
    """A source's rows, to be read a batch at a time: `batches()` yields (rows, their 1-based line
    or row numbers). `keys` is the union of every row's keys, for `infer_kind`."""

    label: str
    from_store: bool
    count: int
    keys: set
    first: object
    batches: Callable[[], Iterator[tuple[list, list[int]]]]
    table: pa.Table | None = None  # a store version's rows as stored: taken whole when already valid


def _open_rows(source: str, batch_rows: int) -> _Rows:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "manifest.json").is_file():
            from prefdata import store

            return _table_rows(store.load_table(str(path)), str(path), True, batch_rows)
        return _hf_rows(path, batch_rows)
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            return _jsonl_rows(path, batch_rows)
        if name.endswith((".json", ".json.gz")):
            return _jsonl_rows(path, batch_rows) if name.endswith(".gz") else _json_array_rows(path, batch_rows)
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:
                raise DataError(f"cannot read Parquet: {e}", file=str(path)) from None
            return _table_rows(table, str(path), False, batch_rows)
        if name.endswith(".csv"):
            return _csv_rows(path, batch_rows)
        raise PrefdataError(f"{path}: unknown file type (use .jsonl, .jsonl.gz, .json, .parquet or .csv)")
    if "@" in source:
        from prefdata import store

        v = store.resolve(source)
        return _table_rows(store.load_table(v), v.ref, True, batch_rows)
    raise PrefdataError(f"file not found: {path}")


# Rows checked and converted at a time: enough to amortise Arrow's per-call cost, few enough that
# the dicts of one batch (about 1 KiB a short prompt row) stay a few MiB whatever the input's size.
READ_BATCH_ROWS = 4096


def read(source: str, kind: str | None = None, *, on_error: str = "raise", quarantine_path=None,
         allow_empty: str | None = None, batch_rows: int = READ_BATCH_ROWS) -> pa.Table:
    """Read any supported source into a schema-valid table of `kind` (inferred when None).

    `allow_empty` ("chosen" | "rejected" | "both"; default none) keeps pairs whose named side is an
    empty answer, stored as one assistant message with content "", instead of failing or
    quarantining them: such a pair is often a real, easy label (an empty reply rarely wins). A
    missing side (null) stays an error.

    Rows are checked and converted `batch_rows` at a time, so memory grows with the Arrow table, not
    with a Python dict per row; `batch_rows` changes neither the rows nor the errors. A store version
    comes through the store's one reader (verified once per process) and, when the row check would keep
    every value, is returned as stored, with no dict per row at all."""
    sides = allow_empty_sides(allow_empty)
    src = _open_rows(str(source), max(1, batch_rows))
    label = src.label
    if not src.count:
        raise DataError("no rows", file=label)
    if kind is None:
        if not isinstance(src.first, dict):
            raise DataError("each row must be a JSON object", file=label, row=1)
        # From every row's keys, not the first row's: a pair further down must not be read as a prompt
        # with stray extra columns (the table's columns would then say "pair" while its rows do not).
        kind = infer_kind(src.keys)
    if sides and kind != "pair":
        raise PrefdataError(f"{label}: allow_empty applies to pairs, but the rows are {kind} rows")
    if src.from_store and kind == "pair":
        sides = ALLOW_EMPTY["both"]  # a version keeps the empty answers it was committed with
    if kind not in SCHEMAS or on_error not in ("raise", "quarantine"):
        check_arguments(kind, on_error)  # raises its one-line error about the argument
    if src.table is not None and (table := _stored_valid(src.table, kind, sides)) is not None:
        return table  # checked at commit: the rows need no dict each to come out as the check gives them
    table = _read_batches(src, kind, on_error, quarantine_path, partial(normalise_row, allow_empty=sides), sides)
    if table.num_rows == 0:
        raise DataError("no valid rows", file=label)
    return table


def _stored_valid(table: pa.Table, kind: str, sides: tuple[str, ...]) -> pa.Table | None:
    """A store version's rows as `read` would return them, taken as they are (no dict per row), or None
    when the row check could change some value: answers that repeat the prompt, which `normalise_row`
    strips, or anything `schema.already_valid` does not vouch for."""
    from prefdata import store

    if kind == "pair":
        import pyarrow.compute as pc

        n_prompt = pc.list_value_length(table.column("prompt"))
        for f in ("chosen", "rejected"):
            if f in table.column_names and pc.any(pc.greater(pc.list_value_length(table.column(f)), n_prompt)).as_py():
                return None
    valid = already_valid(table, kind, sides)
    return None if valid is None else store.core.same_rows(table, valid)


def _read_batches(src: _Rows, kind: str, on_error: str, quarantine_path, normalise, sides) -> pa.Table:
    """The rows checked and converted a batch at a time, then joined into one table."""
    tables, bad, extras = [], [], _Extras()
    for rows, numbers in src.batches():
        good = check_rows(rows, numbers, kind, source=src.label, on_error=on_error, bad=bad, normalise=normalise,
                          empty_ok=sides)
        extras.note(good, kind)
        tables.append(to_table(good, kind))
        del rows, good
    if not extras.consistent():
        # An extra column whose values Arrow types differently from batch to batch: only the whole
        # column says what its type is (or that it is kept as JSON text), so read it whole.
        del tables
        rows, numbers = [], []
        for r, n in src.batches():
            rows += r
            numbers += n
        return validate(rows, kind, source=src.label, on_error=on_error, quarantine_path=quarantine_path,
                        row_numbers=numbers, normalise=normalise, empty_ok=sides)
    if bad:
        _write_quarantine(bad, quarantine_path, src.label)
    # One chunk, as a table built in one go has: the pipeline's input digest hashes its Parquet bytes.
    return pa.concat_tables(tables, promote_options="default").combine_chunks() if len(tables) > 1 else tables[0]


class _Extras:
    """Whether the extra (non-schema) columns come out of a batched read as they would from one
    `to_table` over every row: the same Arrow type in every batch that has a value (a batch of nulls
    takes any type), or JSON text in all of them (`to_table`'s fallback for mixed shapes)."""

    def __init__(self):
        self.types: dict[str, object] = {}
        self.ok = True

    def note(self, good: list[dict], kind: str) -> None:
        names = set(SCHEMAS[kind].names)
        seen = {k for r in good for k in r if k not in names}
        for k in seen:
            values = [r.get(k) for r in good]
            try:
                t = pa.array(values).type
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                t = "json"
            if t == "json" or t != pa.null():
                t = str(t)  # "json" or the type's text: comparable whatever it is
            else:
                continue
            if self.types.setdefault(k, t) != t:
                self.ok = False

    def consistent(self) -> bool:
        return self.ok
