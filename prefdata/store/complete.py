"""Shell completion of dataset refs: the store's folder names, cheap enough for every <TAB>.

Here, inside the store package, so the CLI modules of every package (datasets, eval, train) can
offer refs without importing the step catalog (`prefdata.completion` completes step names).
"""

from __future__ import annotations

import re

from prefdata.store.core import datasets_dir

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
