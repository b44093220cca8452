"""Every path prefdata derives from a user-given name is built here, inside $PREFDATA_HOME.

A dataset name, a pipeline output or a loop name ends up in file names (quarantine files, loop
directories, trained models, reference caches). Building those paths in one place, from a name
that has been checked first, is what keeps `--name ../../x` or an absolute path from writing
outside the store or over the user's input file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
from pathlib import Path

from prefdata.errors import PrefdataError
from prefdata.store.core import check_name, datasets_dir, home

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


# ----------------------------------------------------------------------------- shell completion of refs
# Here, inside the store package, so the CLI modules of every package (datasets, eval, train) can offer
# refs without importing the step catalog (`prefdata.completion` completes step names).

_VERSION = re.compile(r"^v(\d+)$")


def dataset_refs(incomplete: str = "") -> list[str]:
    """`name`, `name@latest` and every `name@vN` in the store that start with `incomplete`; for a
    bare prefix only the names (and @latest), so the list stays short until a name is chosen."""
    root = datasets_dir()
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    name, at, _ = incomplete.partition("@")
    if not at:
        return [r for n in names if n.startswith(name) for r in (n, f"{n}@latest")]
    if name not in names:
        return []
    try:
        numbers = sorted(int(m.group(1)) for p in (root / name).iterdir() if (m := _VERSION.match(p.name)))
    except OSError:
        return []
    refs = [f"{name}@latest", *(f"{name}@v{k}" for k in numbers)]
    return [r for r in refs if r.startswith(incomplete)]


def complete_ref(incomplete: str) -> list[str]:
    """`autocompletion=` for an argument or option that takes a dataset ref (typer calls it on <TAB>;
    a listing of folders, no manifest read, [] when the store cannot be read)."""
    return dataset_refs(incomplete)
