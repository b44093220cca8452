"""Step outputs that are folders, not dataset versions: trained models and evaluation reports.

    $PREFDATA_HOME/models/pipelines/<output>/<fingerprint>/   model/ (the checkpoint + trainer card),
                                                             README.md, step.json
    $PREFDATA_HOME/evals/<output>/<fingerprint>/              README.md, step.json

The folder is named by the step's fingerprint, so a rerun with the same inputs finds it and skips
the step, and different inputs never overwrite each other. `step.json` is written last and
atomically: a folder without it is an unfinished run (killed mid-training) and is redone.

A trained model is also a version, like a dataset: the finished folders of one output name are
`name@v1`, `name@v2`, ... in the order they were stamped, each with its content hash (over every
file of the checkpoint), lineage to its dataset version and a card. `resolve_model_ref("dpo@latest")`
is what lets an engine or voter block name one (`prefdata.models.resolve_model` calls it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

STAMP = "step.json"


@dataclass
class Artifact:
    """What a model/eval step left: `.ref` is what later steps and the CLI see (the model
    checkpoint folder, or the report folder), like a store Version's ref."""

    kind: str
    path: Path  # the fingerprint folder
    manifest: dict = field(default_factory=dict)  # {"lineage": ..., "metrics": ...} as in step.json

    @property
    def ref(self) -> str:
        return str(self.path / "model") if self.kind == "model" else str(self.path)

    @property
    def card_path(self) -> Path:
        card = self.manifest.get("card_path")
        return Path(card) if card else self.path / "README.md"


def folder(home: Path, kind: str, output: str, fp: str) -> Path:
    return (home / "models" / "pipelines" if kind == "model" else home / "evals") / output / fp


def find_done(path: Path, kind: str) -> Artifact | None:
    try:
        manifest = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if kind == "model" and not (path / "model" / "config.json").is_file():
        return None  # stamped, but the weights are gone (deleted by hand): train again
    return Artifact(kind, path, manifest)


def fresh(path: Path) -> None:
    """An empty folder for a (re)run; leftovers of a killed run are removed first."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def content_hash(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every file under `folder`, in path order."""
    from prefdata.store.core import sha256_file  # the one file hasher

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def stamp(path: Path, kind: str, manifest: dict, card_md: str) -> Artifact:
    manifest = {**manifest, "created": manifest.get("created", time.time())}
    if kind == "model" and (path / "model").is_dir():
        manifest["content_sha256"] = content_hash(path / "model")
    (path / "README.md").write_text(card_md)
    tmp = path / (STAMP + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, path / STAMP)
    return Artifact(kind, path, manifest)


def card_markdown(title: str, sections: list[tuple[str, str]], manifest: dict) -> str:
    lines = [f"# {title}", ""]
    for head, body in sections:
        lines += [f"## {head}", "", body, ""]
    if manifest.get("metrics"):
        lines += ["## Metrics", "", "```json", json.dumps(manifest["metrics"], indent=2, default=str), "```", ""]
    lineage = manifest.get("lineage", {})
    lines += ["## Lineage", "", f"- parents: {', '.join(f'`{p}`' for p in lineage.get('parents', []))}",
              f"- fingerprint: `{lineage.get('fingerprint')}`", ""]
    return "\n".join(lines)


_MODEL_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})@(v[0-9]+|latest)$")


def is_model_ref(text: str) -> bool:
    return bool(_MODEL_REF.match(text or ""))


def model_versions(home: Path, name: str) -> list[Artifact]:
    """The finished models trained under output `name`, oldest first (v1 is index 0)."""
    root = home / "models" / "pipelines" / name
    found = [a for a in (find_done(p, "model") for p in (sorted(root.iterdir()) if root.is_dir() else [])) if a]
    # Older stamps have no "created": the stamp file's mtime is the same moment.
    return sorted(found, key=lambda a: (a.manifest.get("created") or (a.path / STAMP).stat().st_mtime, a.path.name))


def model_names(home: Path) -> list[str]:
    root = home / "models" / "pipelines"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def resolve_model_ref(home: Path, ref: str) -> str:
    """`name@vN` or `name@latest` -> that trained model's checkpoint folder."""
    from prefdata.errors import PrefdataError

    m = _MODEL_REF.match(ref)
    if not m:
        raise PrefdataError(f"not a model ref: '{ref}' (expected name@vN or name@latest)")
    name, which = m.groups()
    versions = model_versions(home, name)
    if not versions:
        known = ", ".join(model_names(home)) or "none yet"
        raise PrefdataError(f"no trained model named '{name}' (trained models: {known}); a pipeline train "
                            "step's output names it")
    if which == "latest":
        return versions[-1].ref
    n = int(which[1:])
    if not 1 <= n <= len(versions):
        raise PrefdataError(f"model '{name}' has versions v1..v{len(versions)}, not {which}")
    return versions[n - 1].ref
