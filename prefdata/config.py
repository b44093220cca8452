"""Config loading shared by pipelines and trainers: YAML files, `--set` overrides and one-line
validation messages. A leaf module (errors only), so anything may use it without an import cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from prefdata.errors import ConfigError, PrefdataError


def fmt_validation(source: str, where: str, err: ValidationError, step_names: list | None = None,
                   known: list | None = None) -> str:
    """One line for every problem pydantic found; `known` (a config's field names) is listed after an
    unknown key so the user sees what they could have meant."""
    parts = []
    for e in err.errors():
        where_loc = list(e["loc"])
        # `steps.3.nope` means nothing to a user who wrote `--set steps.rlcd.nope=1`: use the name.
        if step_names and len(where_loc) > 1 and where_loc[0] == "steps" and isinstance(where_loc[1], int) \
                and where_loc[1] < len(step_names) and isinstance(step_names[where_loc[1]], str):
            where_loc[1] = step_names[where_loc[1]]
        loc = ".".join(str(x) for x in (where, *where_loc) if x != "")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'" + (f" (known: {', '.join(known)})" if known else ""))
        else:
            parts.append(f"'{loc}': {e['msg']}")
    return f"{source}: " + "; ".join(parts)


# Deeper than any config needs, and far below what the YAML parser, pydantic and json can walk
# before Python's recursion limit (about 490 levels of lists or mappings in the parser).
MAX_DEPTH = 100
TOO_DEEP = f"nested too deeply (over {MAX_DEPTH} levels of lists or mappings)"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests lists/mappings more than `limit` levels deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values()) + list(node.keys())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, with input nested too deeply for the parser (or for what reads the result:
    pydantic, json, deepcopy) refused as one ConfigError line that starts with `where`. YAML syntax
    errors are left to the caller, which words them."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{where}: {TOO_DEEP}; a config is a few levels deep") from None
    if too_deep(data):
        raise ConfigError(f"{where}: {TOO_DEEP}; a config is a few levels deep")
    return data


def _parse_value(key: str, text: str) -> Any:
    # YAML scalars give the natural types: 3 -> int, 0.5 -> float, true -> bool, [a, b] -> list.
    try:
        return safe_yaml(text, f"--set {key}")
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        shown = text if len(text) <= 80 else text[:80] + "..."
        raise ConfigError(f"--set {key}: cannot parse the value '{shown}' as YAML ({problem}); "
                          "quote it to pass a string") from None


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """`--set a.b.c=v`; inside `steps`, a step is addressed by its name (`steps.rlcd.config.x=1`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {key}: empty key part (expected e.g. steps.<name>.config.x=1)")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                match = [s for s in node if isinstance(s, dict) and s.get("name") == part]
                if not match:
                    names = [s.get("name") for s in node if isinstance(s, dict)]
                    raise ConfigError(f"{source}: --set {key}: no step named '{part}' (steps: {names})")
                node = match[0]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                # e.g. `--set name.x=1`: `name` holds a string, there is nothing inside it to set.
                at = ".".join(parts[:i])
                raise ConfigError(f"{source}: --set {key}: '{at}' is a {type(node).__name__}, not a mapping")
        if isinstance(node, list):
            raise ConfigError(f"{source}: --set {key}: address a step by name, e.g. steps.<name>.config.x")
        if not isinstance(node, dict):
            at = ".".join(parts[:-1])
            raise ConfigError(f"{source}: --set {key}: '{at}' is a {type(node).__name__}, not a mapping")
        node[parts[-1]] = _parse_value(key, value)
    return raw


def read_yaml(path: Path, what: str = "pipeline file") -> Any:
    """A config file's YAML, or one ConfigError line (missing, unreadable, not UTF-8, bad syntax,
    nested too deeply)."""
    path = Path(path)
    if not path.is_file():
        raise PrefdataError(f"{what} not found: {path}")
    try:
        return safe_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None


_fmt_validation = fmt_validation  # the old private name, kept for callers


# A config field that changes how a run goes but never what it produces (batch sizes, concurrency,
# progress bars, where a run is logged) is marked `Field(..., json_schema_extra=RUN_ONLY)`: recorded in
# lineage, left out of the fingerprint, so changing it never invalidates finished work.
RUN_ONLY = {"run_only": True}


def run_only_fields(model: type[BaseModel] | BaseModel) -> set[str]:
    """The names of the fields marked RUN_ONLY on `model` (a class or an instance)."""
    fields = (model if isinstance(model, type) else type(model)).model_fields
    return {name for name, f in fields.items() if isinstance(f.json_schema_extra, dict)
            and f.json_schema_extra.get("run_only")}


def fingerprint_dump(model: BaseModel, dumped: dict | None = None) -> dict:
    """`model` as a fingerprint sees it: its JSON dump (or `dumped`, that dump made already) less the
    RUN_ONLY fields."""
    data = model.model_dump(mode="json") if dumped is None else dumped
    skip = run_only_fields(model)
    return {k: v for k, v in data.items() if k not in skip}
