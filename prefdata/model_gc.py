"""Which trained model versions are still needed, and removing the others (`prefdata models rm`, `gc`).

A model version is kept when something names it:
- it is the latest version of its name (`name@latest`);
- a dataset version's manifest names it (lineage: the engine that generated the rows, a voter's model),
  by its folder or anything inside it, by `name@vN`, or by its content hash;
- a pipeline's records name it: an eval report's `step.json` (`$PREFDATA_HOME/evals/...`), or a
  pipeline file given with `--pipeline` (a `name@vN` ref or a path in it);
- a kept model names it (the base a later model was trained from), followed to a fixed point.

Everything else is garbage, and so are the folders of runs killed before they were whole
(`.tmp-<pid>-*`, `.rm-<pid>-*`, `.model.tmp-<pid>-*` whose process is gone) and the merged copy that
loading a removed LoRA version made (`models/merged/<its hash>`). A removal first writes
every version's number into its stamp (`artifacts.freeze_numbers`), so no other version is renumbered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from prefdata import artifacts
from prefdata.artifacts import Artifact
from prefdata.store.core import pid_alive


@dataclass
class Plan:
    remove: list[tuple[Artifact, int]] = field(default_factory=list)  # (version, bytes)
    leftovers: list[tuple[Path, int, str]] = field(default_factory=list)  # (folder, bytes, why): killed runs...
    kept: dict[str, str] = field(default_factory=dict)  # name@vN -> why

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.remove) + sum(n for _, n, _ in self.leftovers)


def _strings(obj, out: list[str]) -> list[str]:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)
    return out


def _read(path: Path) -> str:
    """The strings of a JSON file, one per line (the text itself if it is not JSON); '' if unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    try:
        return "\n".join(_strings(json.loads(text), []))
    except ValueError:
        return text


def _pattern(a: Artifact, by_hash: bool = True) -> re.Pattern:
    """Matches a text that names `a`: its folder (or a path inside it), name@vN, or (`by_hash`) its
    content hash. Models are not matched by hash: two runs can train the very same weights."""
    paths = {str(a.path), str(a.path.resolve())}
    alts = [re.escape(p) + r"(?![^/\s\"',;)\]}])" for p in sorted(paths)]
    alts.append(r"(?<![A-Za-z0-9._-])" + re.escape(a.version_ref) + r"(?![0-9A-Za-z])")
    sha = a.manifest.get("content_sha256")
    if sha and by_hash:
        alts.append(re.escape(sha))
    return re.compile("|".join(alts))


def _model_text(a: Artifact) -> str:
    return _read(a.path / artifacts.STAMP) + "\n" + _read(a.path / "model" / "prefdata-train.json")


def _sources(home: Path, pipelines: list[Path]) -> list[tuple[str, str]]:
    """(label, text) of everything that is not a model and may name one."""
    out = []
    for m in sorted((home / "datasets").glob("*/v*/manifest.json")):
        out.append((f"dataset {m.parent.parent.name}@{m.parent.name}", _read(m)))
    for s in sorted((home / "evals").glob("*/*/" + artifacts.STAMP)):
        out.append((f"eval report {s.parent.parent.name} ({s.parent})", _read(s)))
    for p in pipelines:
        out.append((f"pipeline {p}", _read(p)))
    return out


def who_names(home: Path, a: Artifact, pipelines: list[Path] = ()) -> list[str]:
    """Labels of the datasets, eval reports, pipelines and other models that name `a`."""
    pat, by_path = _pattern(a), _pattern(a, by_hash=False)
    found = [label for label, text in _sources(home, list(pipelines)) if pat.search(text)]
    for b in artifacts.all_model_versions(home):
        if b.path != a.path and by_path.search(_model_text(b)):
            found.append(f"model {b.version_ref}")
    return found


def plan(home: Path, pipelines: list[Path] = ()) -> Plan:
    versions = artifacts.all_model_versions(home)
    latest = {}
    for a in versions:
        latest[a.name] = a.version_ref  # oldest first: the last one wins
    sources = _sources(home, list(pipelines))
    pats = {a.version_ref: _pattern(a) for a in versions}
    model_pats = {a.version_ref: _pattern(a, by_hash=False) for a in versions}
    texts = {a.version_ref: _model_text(a) for a in versions}
    result = Plan()
    for a in versions:
        if latest[a.name] == a.version_ref:
            result.kept[a.version_ref] = "latest"
            continue
        label = next((lb for lb, text in sources if pats[a.version_ref].search(text)), None)
        if label:
            result.kept[a.version_ref] = f"named by {label}"
    changed = True
    while changed:  # a kept model keeps what it names (the base it was trained from), to a fixed point
        changed = False
        for a in versions:
            if a.version_ref in result.kept:
                continue
            by = next((r for r in result.kept if r != a.version_ref and model_pats[a.version_ref].search(texts[r])),
                      None)
            if by:
                result.kept[a.version_ref] = f"named by model {by}"
                changed = True
    result.remove = [(a, artifacts.folder_bytes(a.path)) for a in versions if a.version_ref not in result.kept]
    kept_shas = {a.manifest.get("content_sha256") for a in versions if a.version_ref in result.kept}
    result.leftovers = [(p, artifacts.folder_bytes(p), "left by a killed run") for p in dead_folders(home)]
    seen = set()
    for a, _ in result.remove:
        m = merged_copy(home, a)
        if m is not None and m not in seen and a.manifest["content_sha256"] not in kept_shas:
            seen.add(m)
            result.leftovers.append((m, artifacts.folder_bytes(m), f"merged copy of {a.version_ref}"))
    return result


def merged_copy(home: Path, a: Artifact) -> Path | None:
    """The merged checkpoint that loading a LoRA version made (`prefdata.models.merged_adapter`, keyed by
    the adapter's content hash), if there is one."""
    sha = a.manifest.get("content_sha256")
    m = home / "models" / "merged" / sha[:16] if sha else None
    return m if m is not None and m.is_dir() else None


_INNER = re.compile(r"^\.(?:model|adapter)\.(?:tmp|old)-(\d+)-[0-9a-f]+$")  # inside a pipeline step's folder


def dead_folders(home: Path) -> list[Path]:
    found = []
    for root in artifacts.MODEL_ROOTS:
        for d in sorted((home / "models" / root).glob("*/")):
            found += artifacts.stale_folders(d)
            for sub in sorted(d.iterdir()):
                if sub.is_dir() and not sub.name.startswith("."):
                    found += [p for p in sub.iterdir()
                              if (m := _INNER.match(p.name)) and not pid_alive(int(m.group(1)))]
    return found


def apply(home: Path, p: Plan) -> None:
    import shutil

    for a, _ in p.remove:
        artifacts.remove_version(home, a)
    for path, _, _ in p.leftovers:
        shutil.rmtree(path, ignore_errors=True)
