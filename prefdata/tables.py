"""The one table printer of the CLI, and its JSON twin.

Off a terminal (a pipe, a file, nohup) a table is plain tab-separated lines under a header row, so
`cut -f1` and `awk -F'\\t'` work. On a terminal it is a rich table in which the columns a user
copies (refs, paths) never wrap or get an ellipsis: they fold onto a next line whole. `wide=True`
lays the table out at its natural width, however wide the terminal is.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

# Columns whose values are copied: never cut, never broken at a hyphen.
COPYABLE = frozenset({"ref", "path", "name", "parents", "card"})


def _cell(v) -> str:
    # A tab or newline inside a value would shift every later column of the TSV.
    return "" if v is None else " ".join(str(v).replace("\t", " ").splitlines())


def print_table(columns: Sequence[str], rows: Iterable[Sequence], *, wide: bool = False, file=None,
                copyable: Iterable[str] = COPYABLE) -> None:
    file = file or sys.stdout
    rows = [[_cell(v) for v in r] for r in rows]
    if not getattr(file, "isatty", lambda: False)():
        print("\t".join(columns), file=file)
        for r in rows:
            print("\t".join(r), file=file)
        return
    from rich.console import Console
    from rich.table import Table

    keep = set(copyable)
    t = Table()
    for i, c in enumerate(columns):
        longest = max([len(c), *(len(r[i]) for r in rows)])
        if c in keep:
            # A copyable value folds onto the next line character by character (a ref has no spaces
            # to wrap at), so all of it stays on screen; it is never cropped or given an ellipsis.
            t.add_column(c, overflow="fold", min_width=min(longest, 8))
        else:
            t.add_column(c, overflow="fold", min_width=min(longest, 4))
    for r in rows:
        t.add_row(*r)
    console = Console(file=file)
    if wide:
        # Natural width: the longest cell of each column plus borders and padding (3 per column).
        natural = sum(max([len(c), *(len(r[i]) for r in rows)]) + 3 for i, c in enumerate(columns)) + 1
        console = Console(file=file, width=max(natural, console.width))
    console.print(t)


def jsonable(obj):
    """`obj` with every non-finite float as None: NaN and inf are not JSON, and `jq` refuses them
    (a report over zero rows has NaN rates)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def dumps(obj) -> str:
    """The one JSON rendering of the CLI: indented, UTF-8, non-finite numbers as null, non-JSON values
    (paths, datetimes) as strings."""
    return json.dumps(jsonable(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False)


def print_json(obj, file=None) -> None:
    """One JSON document on stdout (see `dumps`)."""
    print(dumps(obj), file=file or sys.stdout)


def emit_report(schema: str, report: dict, text: str, out=None, as_json: bool = False) -> None:
    """An eval command's result: the text report, or with --json one document whose first key is
    `schema`; --out also writes that document to a file."""
    doc = {"schema": schema, **report}
    if as_json:
        print_json(doc)
    else:
        print(text)
    if out:
        Path(out).write_text(dumps(doc) + "\n", encoding="utf-8")
