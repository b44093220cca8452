"""Shell completion values: dataset refs from the store, step names from a pipeline YAML and step
types from the registry. Typer calls these on each <TAB> (`autocompletion=`), so they must be cheap
and must never raise: a listing of folders, no manifest read, nothing loaded, [] when in doubt.

    prefdata --install-completion          # once, for the current shell
    prefdata datasets show my-<TAB>        # my-pairs  my-pairs@latest  my-pairs@v1  my-pairs@v2
    prefdata run p.yaml --set steps.<TAB>  # steps.rlcd.  steps.clean.  (the YAML's step names)
"""

from __future__ import annotations

import re
from pathlib import Path

from prefdata.store.paths import complete_ref, dataset_refs  # noqa: F401  (one import for every CLI)


def step_types(incomplete: str = "") -> list[tuple[str, str]]:
    """(registered step type, "input -> output: doc") for each built-in `uses:` value starting with `incomplete`."""
    try:
        from prefdata.catalog import step_types as registered

        types = registered()
    except Exception:  # completion must never print a traceback into the shell
        return []
    # The help shown beside each name: what it reads and writes (a step's config class would import
    # torch for the train steps, far too slow for a <TAB>).
    return [(n, f"{t.input} -> {t.output}" + (f": {t.doc}" if t.doc else "")) for n, t in sorted(types.items())
            if n.startswith(incomplete)]


def pipeline_step_names(path: str | Path) -> list[str]:
    """The `name:` of each step in a pipeline YAML, in order; [] when the file is missing or unreadable."""
    import yaml

    try:
        spec = yaml.safe_load(Path(path).read_text())
        steps = spec.get("steps") if isinstance(spec, dict) else None
        return [s["name"] for s in steps or [] if isinstance(s, dict) and isinstance(s.get("name"), str)]
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []


def set_keys(pipeline_file: str | Path | None, incomplete: str = "") -> list[str]:
    """Values for `prefdata run FILE --set`: `steps.<name>.` for FILE's steps, and after
    `steps.<name>.uses=` the registered step types."""
    m = re.match(r"^steps\.([^.=]+)\.uses=(.*)$", incomplete)
    if m:
        return [f"steps.{m.group(1)}.uses={n}" for n, _ in step_types(m.group(2))]
    names = pipeline_step_names(pipeline_file) if pipeline_file else []
    keys = [f"steps.{n}." for n in names]
    return [k for k in keys if k.startswith(incomplete)]


# ----------------------------------------------------------------------------- typer callbacks


def complete_step_type(incomplete: str) -> list[tuple[str, str]]:
    """`autocompletion=` for an argument that takes a step type (`uses:`)."""
    return step_types(incomplete)


def complete_set(ctx, incomplete: str) -> list[str]:
    """`autocompletion=` for `prefdata run FILE --set`: reads FILE from the command line parsed so far."""
    return set_keys((ctx.params or {}).get("file"), incomplete)
