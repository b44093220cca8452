"""How prefdata opens its SQLite caches (request cache, feature cache), shared by both.

Several `prefdata` processes may open the same cache at once (two runs on one home). SQLite's busy
timeout covers ordinary lock waits, but switching a fresh file to WAL fails at once with "database
is locked" when another process is switching it at the same moment (the busy handler is not
consulted there): about one start in twenty with eight processes. So WAL is set only when the file
is not in WAL already, and retried with jittered sleeps until the timeout.

Every sqlite error is translated into one line that names the file: a corrupt file (not a
database, malformed, undecodable text) points at `prefdata cache clear`; a full disk and a
read-only home say so.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from pathlib import Path

from prefdata.errors import PrefdataError

TIMEOUT_S = 60.0


class CacheError(PrefdataError):
    """A cache file that cannot be used: corrupt, on a full disk, read-only, or locked too long."""


def _clear_hint(path: Path) -> str:
    from prefdata.store import home

    default = home() / "cache"
    try:
        inside = path.resolve().parent == default.resolve()
    except OSError:
        inside = False
    return "prefdata cache clear" if inside else f"prefdata cache clear {path}"


def explain(err: Exception, path: Path, what: str = "cache") -> CacheError:
    """The one-line error for a sqlite (or decoding) failure on `path`."""
    msg = str(err)
    low = msg.lower()
    if isinstance(err, (UnicodeDecodeError, ValueError, TypeError)) or any(
            s in low for s in ("not a database", "malformed", "could not decode", "file is encrypted")):
        return CacheError(f"{what} {path} is corrupt ({msg.splitlines()[0][:120]}); "
                          f"delete it with `{_clear_hint(path)}` and rerun")
    if "disk is full" in low:
        return CacheError(f"{what} {path}: no space left on device ({msg}); free some space and rerun")
    if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
        return CacheError(f"{what} {path}: cannot write ({msg}); check that PREFDATA_HOME is writable")
    if "locked" in low or "busy" in low:
        return CacheError(f"{what} {path} stayed locked by another process for over {TIMEOUT_S:.0f}s ({msg})")
    return CacheError(f"{what} {path}: {msg}")


@contextlib.contextmanager
def guard(path: Path, what: str = "cache"):
    """Turn sqlite (and bad-row decoding) errors inside the block into one-line CacheErrors."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as err:
        raise explain(err, path, what) from err


def _retry_locked(fn, deadline: float):
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as err:
            low = str(err).lower()
            if ("locked" not in low and "busy" not in low) or time.monotonic() > deadline:
                raise
            time.sleep(0.02 + random.random() * 0.08)


def connect(path: str | Path, *, schema: tuple[str, ...] = (), what: str = "cache",
            timeout: float = TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating if needed) a WAL-mode SQLite file safely shared by several processes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"{what} {path}: cannot create its folder ({err.strerror or err})") from None
    deadline = time.monotonic() + timeout
    with guard(path, what):
        db = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")

        def wal():
            # Reading the mode first: a file already in WAL needs no lock at all.
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")

        _retry_locked(wal, deadline)
        db.execute("PRAGMA synchronous=NORMAL")
        for stmt in schema:
            _retry_locked(lambda s=stmt: db.execute(s), deadline)
        _retry_locked(db.commit, deadline)
    return db
