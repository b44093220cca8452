"""Every path prefdata derives from a user-given name is built here, inside $PREFDATA_HOME.

A dataset name, a pipeline output or a loop name ends up in file names (quarantine files, loop
directories, trained models, reference caches). Building those paths in one place, from a name
that has been checked first, is what keeps `--name ../../x` or an absolute path from writing
outside the store or over the user's input file.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
from pathlib import Path

from prefdata.errors import PrefdataError
from prefdata.store.core import check_name, home

_handed_out: set[Path] = set()  # quarantine paths given out by this process, never given twice
_handed_lock = threading.Lock()


def safe_path(*parts: str) -> Path:
    """`home()/part/part…`, refused unless it resolves inside home(). Parts are single components or
    relative sub-paths; an absolute part, `..` or a symlink that leads out is an error."""
    root = home().resolve()
    for p in parts:
        if not isinstance(p, str) or not p or os.path.isabs(p) or "\0" in p:
            raise PrefdataError(f"invalid path component {p!r} under the store {root}")
    path = root.joinpath(*parts)
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise PrefdataError(f"path {path} leaves the store {root}")
    return path


def named_path(area: str, name: str, suffix: str = "") -> Path:
    """`home()/<area>/<name><suffix>` for a validated dataset-style name (loops, models, refcache)."""
    check_name(name)
    return safe_path(*area.split("/"), name + suffix)


def quarantine_path(name: str) -> Path:
    """A fresh file for this run's bad rows: quarantine/<name>-<UTC time>-<pid>[-n].jsonl.

    The name is checked first, so a bad name fails before any input is read. The file does not
    exist yet; a path already on disk or handed out earlier in this process is skipped, so one
    run's quarantine never replaces another's."""
    check_name(name)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{name}-{stamp}-{os.getpid()}"
    with _handed_lock:
        n = 0
        while True:
            path = safe_path("quarantine", f"{base}{f'-{n}' if n else ''}.jsonl")
            if path not in _handed_out and not path.exists() and not path.with_suffix(".jsonl.tmp").exists():
                _handed_out.add(path)
                return path
            n += 1
