"""The record types every stage exchanges, as Arrow schemas (see ARCHITECTURE.md, "Schema").

Chat messages are `list[{"role", "content"}]`, the conversational format TRL and vLLM use.
`meta` and `sampling` are JSON strings: they vary per generator, and a JSON string keeps the
Parquet schema stable across versions (and `datasets` features simple).

Extra columns beyond the ones below are allowed and kept (generators add their own); the
required columns must be present with the given types.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROMPT = pa.schema([
    ("id", pa.string()),
    ("prompt", MESSAGES),
    ("meta", pa.string()),
])

COMPLETION = pa.schema([
    ("id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", MESSAGES),
    ("completion", MESSAGES),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("sampling", pa.string()),
    ("finish_reason", pa.string()),
    ("logprob", pa.float64()),
])

PAIR = pa.schema([
    ("id", pa.string()),
    ("prompt", MESSAGES),
    ("chosen", MESSAGES),
    ("rejected", MESSAGES),
    ("source", pa.string()),
    ("chosen_score", pa.float64()),
    ("rejected_score", pa.float64()),
    ("votes", pa.list_(pa.float64())),
    ("strength_mean", pa.float64()),
    ("strength_std", pa.float64()),
    ("label_prob", pa.float64()),
    ("margin", pa.float64()),
    ("flipped", pa.bool_()),
    ("meta", pa.string()),
])

# Scored candidates, kept beside the rows built from them (self_reward, rejection_sampling): completion
# rows plus the reward evidence. Explicit types so an all-null column keeps its type. Committed as the
# "completion" kind (the extra columns travel as extras).
CANDIDATE = pa.schema(list(COMPLETION) + [
    pa.field("judgements", pa.list_(pa.string())),  # raw judge texts (empty for a reward model)
    pa.field("judge_scores", pa.list_(pa.float64())),  # parsed judge scores, null when unparseable
    pa.field("score", pa.float64()),  # the candidate's reward, null when it could not be scored
    pa.field("filtered", pa.string()),  # why it was kept out of selection (empty, repetitive), or null
])

UNPAIRED = pa.schema([
    ("id", pa.string()),
    ("prompt", MESSAGES),
    ("completion", MESSAGES),
    ("label", pa.bool_()),
    ("weight", pa.float64()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "prompt": PROMPT,
    "completion": COMPLETION,
    "pair": PAIR,
    "unpaired": UNPAIRED,
}

# Columns a row must carry; everything else in a schema may be filled with its default.
REQUIRED: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",),
    "completion": ("prompt", "completion"),
    "pair": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}

# Defaults for optional columns when a source lacks them (a freshly imported pair has no votes
# yet, is taken at face value, and has not been flipped).
DEFAULTS: dict[str, dict[str, object]] = {
    "prompt": {"meta": "{}"},
    "completion": {"engine": "", "model": "", "sampling": "{}", "finish_reason": "", "logprob": None},
    "pair": {"source": "", "chosen_score": None, "rejected_score": None, "votes": None,
             "strength_mean": None, "strength_std": None, "label_prob": 1.0, "margin": 0.0,
             "flipped": False, "meta": "{}"},
    "unpaired": {"weight": 1.0},
}


def content_id(*parts: object) -> str:
    """A stable content hash (hex, 16 chars) of JSON-serialisable parts, e.g. a pair's
    (prompt, chosen, rejected). Same content -> same id, across runs and machines."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- validation

ROLES = frozenset({"system", "user", "assistant", "tool"})
MESSAGE_FIELDS = {"prompt": "user", "chosen": "assistant", "rejected": "assistant", "completion": "assistant"}


class RowError(Exception):
    """A bad value inside one row; `validate` turns it into a DataError with file and row."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


# A pair side kept as an empty answer (`io.read(allow_empty=...)`): one assistant turn with no text.
EMPTY_ANSWER = ({"role": "assistant", "content": ""},)


def as_messages(value, field: str, empty_ok: bool = False) -> list[dict]:
    """Messages from a list of {role, content}, or a plain string (the role follows the field:
    a bare prompt is a user turn, a bare answer an assistant turn). `empty_ok` accepts the one
    `EMPTY_ANSWER` shape too, which the reader gives a side whose answer is empty when asked to keep it."""
    if empty_ok and isinstance(value, (list, tuple)) and list(value) == list(EMPTY_ANSWER):
        return [dict(EMPTY_ANSWER[0])]
    if isinstance(value, str):
        value = [{"role": MESSAGE_FIELDS.get(field, "user"), "content": value}]
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError(field, "must be a non-empty list of messages or a non-empty string")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"{field}[{i}]", "message must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise RowError(f"{field}[{i}].role", f"unknown role {role!r} (expected one of {sorted(ROLES)})")
        if not isinstance(content, str):
            # A number or a list here is a layout mistake, not an empty turn: say what was found.
            got = "null" if content is None else type(content).__name__
            raise RowError(f"{field}[{i}].content", f"must be a string, got {got}")
        if not content.strip():
            raise RowError(f"{field}[{i}].content", "empty message content")
        out.append({"role": role, "content": content})
    return out


def _number(value, field: str, lo: float | None = None, hi: float | None = None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(field, f"must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int such as 10**400: no float holds it
        raise RowError(field, f"number out of range ({len(str(abs(value)))}-digit integer)") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise RowError(field, "must be finite (got NaN or inf)")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RowError(field, f"must be within [{lo}, {hi}], got {v}")
    return v


def _json_text(value, field: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError) as e:
        raise RowError(field, f"not JSON-serialisable: {e}") from None


MAX_DEPTH = 64  # nesting levels a value may have; real rows use 3 (list of message objects)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def scan_values(row: dict, kind: str) -> None:
    """Refuse what Arrow and UTF-8 cannot hold, naming the field: lone surrogates (a JSON "\\ud800"
    escape), nesting deeper than MAX_DEPTH, and integers beyond 64 bits in extra columns (schema
    columns are floats and are range-checked by `_number`). Iterative, so depth cannot blow the stack."""
    schema_cols = set(SCHEMAS[kind].names)
    for k in row:
        _check_text(k, "(column name)")
    stack = [(v, _segment(k), 1, k in schema_cols) for k, v in row.items()]
    while stack:
        value, path, depth, in_schema = stack.pop()
        if depth > MAX_DEPTH:
            raise RowError(path.split("[")[0].split(".")[0], f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, bool) or value is None or isinstance(value, float):
            continue
        elif isinstance(value, int):
            if not in_schema and not _INT64[0] <= value <= _INT64[1]:
                raise RowError(path, f"integer out of the 64-bit range ({len(str(abs(value)))} digits)")
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, f"{path} (key)")
                stack.append((v, f"{path}.{_segment(k)}", depth + 1, in_schema))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", depth + 1, in_schema) for i, v in enumerate(value))


def _segment(key) -> str:
    """A key as it may appear in a one-line error: plain names as they are, anything else quoted."""
    if isinstance(key, str) and _text_ok(key) and key.isprintable() and 0 < len(key) <= 40:
        return key
    return json.dumps(str(key)[:40]) if isinstance(key, str) and _text_ok(key) else "(key)"


def _text_ok(s) -> bool:
    try:
        s.encode("utf-8")
        return True
    except (UnicodeEncodeError, AttributeError):
        return False


def _check_text(s, path: str) -> None:
    if isinstance(s, str) and not _text_ok(s):
        bad = next(c for c in s if 0xD800 <= ord(c) <= 0xDFFF)
        raise RowError(path, f"invalid Unicode: lone surrogate \\u{ord(bad):04x} (not valid UTF-8)")


def check_row(row: dict, kind: str, empty_ok: tuple[str, ...] = ()) -> dict:
    """One normalised row of `kind`, or RowError naming the field (run `scan_values` on raw rows first).
    A message field in `empty_ok` may hold the `EMPTY_ANSWER`."""
    for f in REQUIRED[kind]:
        if row.get(f) is None or (isinstance(row.get(f), str) and not row[f].strip()):
            raise RowError(f, "missing" if row.get(f) is None else "empty")
    out = dict(row)
    for f in SCHEMAS[kind].names:
        if f in MESSAGE_FIELDS and (f in REQUIRED[kind] or out.get(f) is not None):
            out[f] = as_messages(out[f], f, f in empty_ok)
    for f, default in DEFAULTS[kind].items():
        if out.get(f) is None:
            out[f] = default
    if kind == "pair":
        for f in ("chosen_score", "rejected_score", "strength_mean", "strength_std", "margin"):
            out[f] = _number(out.get(f), f)
        out["label_prob"] = _number(out.get("label_prob"), "label_prob", 0.0, 1.0)
        votes = out.get("votes")
        if votes is not None:
            if not isinstance(votes, (list, tuple)):
                raise RowError("votes", "must be a list of numbers")
            out["votes"] = [_number(v, f"votes[{i}]") for i, v in enumerate(votes)]
        if not isinstance(out.get("flipped"), bool):
            raise RowError("flipped", "must be true or false")
    if kind == "unpaired":
        if not isinstance(out["label"], bool):
            raise RowError("label", "must be true or false")
        out["weight"] = _number(out.get("weight"), "weight", 0.0, None)
    if kind == "completion":
        out["logprob"] = _number(out.get("logprob"), "logprob")
    for f in ("meta", "sampling"):
        if f in SCHEMAS[kind].names:
            out[f] = _json_text(out.get(f), f)
    for f in ("engine", "model", "finish_reason", "source"):
        if f in SCHEMAS[kind].names and out.get(f) is not None and not isinstance(out[f], str):
            out[f] = str(out[f])
    if not out.get("id"):
        content = {"prompt": ["prompt"], "pair": ["prompt", "chosen", "rejected"],
                   "completion": ["prompt", "completion"], "unpaired": ["prompt", "completion", "label"]}[kind]
        out["id"] = content_id(*(out[c] for c in content))
    else:
        out["id"] = str(out["id"])
    return out


def validate(data, kind: str, *, source: str = "<memory>", on_error: str = "raise",
             quarantine_path=None, row_numbers: list[int] | None = None, normalise=None,
             empty_ok: tuple[str, ...] = ()):
    """Coerce rows to `kind`'s schema (extra columns kept) or fail naming file, row and field.

    With on_error="quarantine", bad rows go to `quarantine_path` (JSONL with row, field, reason and
    the record) and the good rows are returned; the count is reported on stderr. Nothing is dropped
    silently either way. `normalise(row, kind)` maps another layout (HH, TRL) onto our fields first;
    the message fields in `empty_ok` may hold the `EMPTY_ANSWER` it gives a kept empty answer.
    """
    check_arguments(kind, on_error)
    if isinstance(data, pa.Table):
        rows = data.to_pylist()
    elif hasattr(data, "to_arrow"):
        rows = data.to_arrow().to_pylist()
    else:
        rows = list(data)
    bad: list[dict] = []
    good = check_rows(rows, row_numbers or range(1, len(rows) + 1), kind, source=source, on_error=on_error,
                      bad=bad, normalise=normalise, empty_ok=empty_ok)
    if bad:
        _write_quarantine(bad, quarantine_path, source)
    return to_table(good, kind)


def check_arguments(kind: str, on_error: str) -> None:
    """`validate`'s one-line errors about its arguments (an unknown kind or on_error)."""
    from prefdata.errors import PrefdataError

    if kind not in SCHEMAS:
        raise PrefdataError(f"unknown record kind '{kind}' (expected one of {', '.join(SCHEMAS)})")
    if on_error not in ("raise", "quarantine"):
        raise PrefdataError(f"on_error must be 'raise' or 'quarantine', got '{on_error}'")


def check_rows(rows: list, numbers, kind: str, *, source: str, on_error: str, bad: list, normalise=None,
               empty_ok: tuple[str, ...] = ()) -> list[dict]:
    """The row loop of `validate` (and of `io.read`, a batch at a time): the good rows, normalised and
    checked. A bad row raises a DataError naming `source`, its number in `numbers` and the field, or,
    when quarantining, is appended to `bad` for the caller to write once."""
    from prefdata.errors import DataError

    good = []
    for row, n in zip(rows, numbers):
        try:
            if not isinstance(row, dict):
                raise RowError("(row)", "must be a JSON object")
            scan_values(row, kind)  # before normalising: HH splitting and prefix matching walk the values
            good.append(check_row(normalise(row, kind) if normalise else row, kind, empty_ok))
        except RowError as e:
            if on_error == "raise":
                raise DataError(e.reason, file=source, row=n, field=e.field) from None
            bad.append({"row": n, "field": e.field, "reason": e.reason, "record": row})
    return good


def _write_quarantine(bad: list[dict], path, source: str) -> None:
    import os
    import sys
    from pathlib import Path

    from prefdata.errors import PrefdataError

    if path is None:
        raise PrefdataError(f"{source}: {len(bad)} bad rows and no quarantine file given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # backslashreplace: a record holding a lone surrogate is written as its JSON escape again
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
        for b in bad:
            f.write(_quarantine_line({"source": source, **b}) + "\n")
    os.replace(tmp, path)
    print(f"warning: {source}: {len(bad)} rows quarantined to {path} (first: row {bad[0]['row']}, "
          f"field '{bad[0]['field']}': {bad[0]['reason']})", file=sys.stderr)


def _quarantine_line(rec: dict) -> str:
    try:
        return json.dumps(rec, ensure_ascii=False, default=str)
    except (RecursionError, ValueError):  # a record too deep to serialise: keep its head
        return json.dumps({**rec, "record": repr(rec["record"])[:10_000]}, ensure_ascii=False)


def to_table(rows: list[dict], kind: str) -> pa.Table:
    """Rows already normalised by `check_row` -> Arrow, schema columns typed, extras appended."""
    schema = SCHEMAS[kind]
    table = pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in rows], schema=schema)
    extras: list[str] = []
    for r in rows:
        extras += [k for k in r if k not in schema.names and k not in extras]
    for k in extras:
        values = [r.get(k) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            # Mixed shapes across rows: keep them losslessly as JSON text.
            arr = pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())
        table = table.append_column(k, arr)
    return table


def conform(table: pa.Table, kind: str) -> pa.Table:
    """Cast a table that already holds valid values (e.g. from polars, which uses large types) to the
    exact schema of `kind`, schema columns first, extra columns kept as they are."""
    schema = SCHEMAS[kind]
    cols = [table.column(f.name).cast(f.type) for f in schema]
    extras = [n for n in table.column_names if n not in schema.names]
    return pa.Table.from_arrays(cols + [table.column(n) for n in extras],
                                schema=pa.schema(list(schema) + [table.schema.field(n) for n in extras]))


# ----------------------------------------------------------------------------- tables already valid

# A character Python's str.strip() keeps: a text holding one is not blank (the class is every
# whitespace character of str.isspace, checked over all of Unicode).
_NOT_SPACE = r"[^\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]"
_NUMBER_RANGES = {"pair": {"chosen_score": (None, None), "rejected_score": (None, None), "strength_mean": (None, None),
                           "strength_std": (None, None), "margin": (None, None), "label_prob": (0.0, 1.0),
                           "votes": (None, None)},
                  "unpaired": {"weight": (0.0, None)}, "completion": {"logprob": (None, None)}, "prompt": {}}


def already_valid(table: pa.Table, kind: str, empty_ok: tuple[str, ...] = ()) -> pa.Table | None:
    """`table` as `validate(table, kind, empty_ok=empty_ok)` would return it, when that can be told
    from its columns without a Python dict per row (a store version, checked at commit, nearly always
    can); None when some value would be changed or refused, or an extra column's type would come out
    otherwise (an all-null one becomes type null): then run `validate`."""
    schema, names = SCHEMAS[kind], table.column_names
    if table.num_rows == 0 or len(set(names)) != len(names) or not all(
            f.name in names and table.schema.field(f.name).type == f.type for f in schema):
        return None
    extras = [n for n in names if n not in schema.names]
    types = [_inferred_type(table.column(n)) for n in extras]
    if None in types or not _values_valid(table, kind, empty_ok):
        return None
    try:
        table.validate(full=True)  # e.g. invalid UTF-8, which a dict per row could not even be made of
    except pa.ArrowInvalid:
        return None
    out = pa.schema(list(schema) + [pa.field(n, t) for n, t in zip(extras, types)])
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in out], schema=out)


def _none(mask) -> bool:
    """No true value in a boolean array (nulls are not true)."""
    return not pc.any(mask).as_py()


def _values_valid(table: pa.Table, kind: str, empty_ok: tuple[str, ...]) -> bool:
    """`check_row` would keep every value as it is: ids set, required and defaulted columns present,
    messages well formed, numbers finite and in range."""
    ids = table.column("id")
    if ids.null_count or not _none(pc.equal(ids, "")):
        return False
    defaulted = [f for f, d in DEFAULTS[kind].items() if d is not None]
    if any(table.column(f).null_count for f in (*REQUIRED[kind], *defaulted)):
        return False
    for f, (lo, hi) in _NUMBER_RANGES[kind].items():
        col = table.column(f)
        if pa.types.is_list(col.type):
            col = pc.list_flatten(col)
        if not _none(pc.invert(pc.is_finite(col))) or (lo is not None and not _none(pc.less(col, lo))) \
                or (hi is not None and not _none(pc.greater(col, hi))):
            return False
    return all(_messages_valid(table.column(f), f in empty_ok) for f in SCHEMAS[kind].names if f in MESSAGE_FIELDS)


def _messages_valid(col: pa.ChunkedArray, empty_ok: bool) -> bool:
    """Every non-null message list of `col` is what `as_messages` returns unchanged."""
    for arr in col.chunks:
        if arr.null_count:  # a null optional field is not checked; dropping them keeps values and parents aligned
            arr = arr.filter(pc.is_valid(arr))
        lengths = pc.list_value_length(arr)
        if not _none(pc.less(lengths, 1)):
            return False
        msgs = arr.flatten()
        if msgs.null_count:
            return False
        role, content = msgs.flatten()
        if role.null_count or content.null_count or not pc.all(pc.is_in(role, pa.array(sorted(ROLES)))).as_py():
            return False
        blank = pc.invert(pc.match_substring_regex(content, _NOT_SPACE))
        if _none(blank):
            continue
        if not empty_ok:
            return False
        # Only a side that is exactly the EMPTY_ANSWER may hold a blank text.
        single = pc.take(pc.equal(lengths, 1), pc.list_parent_indices(arr))
        kept = pc.and_(pc.and_(single, pc.equal(role, "assistant")), pc.equal(content, ""))
        if not _none(pc.and_(blank, pc.invert(kept))):
            return False
    return True


def _inferred_type(col, depth: int = 1) -> pa.DataType | None:
    """The type `pa.array` gives the Python values of an extra column (as `to_table` builds it), when
    it is this column's type again; None when it would differ or cannot be told: a column (or a
    nested field) with no value at all comes back as type null, and only plain types are judged."""
    t = col.type
    if col.null_count == len(col) or depth > 16:  # deep nesting: let `scan_values` judge it
        return None
    if t in (pa.string(), pa.int64(), pa.float64(), pa.bool_()):
        return t
    if pa.types.is_list(t):
        inner = _inferred_type(pc.list_flatten(col), depth + 1)
        return None if inner is None else pa.list_(inner)
    if pa.types.is_struct(t) and t.num_fields and len({f.name for f in t}) == t.num_fields:
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        fields = []
        for i in range(t.num_fields):
            child = pa.chunked_array([c.flatten()[i] for c in chunks], t.field(i).type)
            inner = _inferred_type(child, depth + 1)
            if inner is None:
                return None
            fields.append(pa.field(t.field(i).name, inner))
        return pa.struct(fields)
    return None
