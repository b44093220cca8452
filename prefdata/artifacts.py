"""Step outputs that are folders, not dataset versions: trained models and evaluation reports.

    $PREFDATA_HOME/models/pipelines/<output>/<fingerprint>/   model/ (the checkpoint + trainer card),
                                                             README.md, step.json
    $PREFDATA_HOME/evals/<output>/<fingerprint>/              README.md, step.json

The folder is named by the step's fingerprint, so a rerun with the same inputs finds it and skips
the step, and different inputs never overwrite each other. `step.json` is written last and
atomically: a folder without it is an unfinished run (killed mid-training) and is redone.
"""

from __future__ import annotations

import json
import os
import shutil
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


def stamp(path: Path, kind: str, manifest: dict, card_md: str) -> Artifact:
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
