"""One exception family for user-facing failures.

The CLI prints `str(err)` on one line and exits non-zero; `--debug` shows the traceback.
Anything that is the user's fault (bad file, bad ref, bad YAML) should raise one of these,
never a bare KeyError from deep inside.
"""

from __future__ import annotations


class PrefdataError(Exception):
    """A failure the user can fix; its message is shown as is."""


class DataError(PrefdataError):
    """A bad row: names the file, the 1-based row (line) number and the field."""

    def __init__(self, reason: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None):
        self.reason, self.file, self.row, self.field = reason, file, row, field
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), reason]) if where else reason}")


class RefError(PrefdataError):
    """An unknown or malformed dataset reference such as `name@v9`."""


class ConfigError(PrefdataError):
    """A bad pipeline or trainer config (unknown key, wrong type): names the file and the key."""
