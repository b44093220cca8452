"""Step outputs that are folders, not dataset versions: trained models and evaluation reports.

    $PREFDATA_HOME/models/pipelines/<output>/<fingerprint>/   model/ (the checkpoint + trainer card),
                                                             README.md, step.json
    $PREFDATA_HOME/evals/<output>/<fingerprint>/              README.md, step.json

The folder is named by the step's fingerprint, so a rerun with the same inputs finds it and skips
the step, and different inputs never overwrite each other. `step.json` is written last and
atomically: a folder without it is an unfinished run (killed mid-training) and is redone.

`prefdata train` (no `--output-dir`) keeps its models the same way, one folder per run:

    $PREFDATA_HOME/models/trained/<name>/<run id>/           model/ (checkpoint or adapter + trainer card),
                                                             README.md, step.json

A run trains into `<name>/.tmp-<pid>-<hex>/` and is stamped and renamed into place only when whole,
so a killed run is never a version (`sweep_stale` removes its folder once its process is gone).

A trained model is also a version, like a dataset: the finished folders of one name, in both roots,
are `name@v1`, `name@v2`, ... in the order they were stamped, each with its content hash (over every
file of the checkpoint), lineage to its dataset version and a card. `resolve_model_ref("dpo@latest")`
is what lets an engine or voter block name one (`prefdata.models.resolve_model` calls it). Removing a
version (`prefdata models rm`, `gc`) first writes every version's number into its stamp
(`freeze_numbers`), so the others keep their numbers, and records the highest number removed
(`models/.removed/<name>`), so a ref never names two different models.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefdata.store.core import pid_alive

STAMP = "step.json"
MODEL_ROOTS = ("pipelines", "trained")  # models/<root>/<name>/<folder>: pipeline train steps, `prefdata train`
# What makes `<folder>/model` a model: a transformers checkpoint, a LoRA adapter, or armo's heads.
MODEL_MARKERS = ("config.json", "adapter_config.json", "armo.json")


@dataclass
class Artifact:
    """What a model/eval step left: `.ref` is what later steps and the CLI see (the model
    checkpoint folder, or the report folder), like a store Version's ref."""

    kind: str
    path: Path  # the fingerprint folder
    manifest: dict = field(default_factory=dict)  # {"lineage": ..., "metrics": ...} as in step.json
    version: int | None = None  # N of name@vN, set by model_versions

    @property
    def ref(self) -> str:
        return str(self.path / "model") if self.kind == "model" else str(self.path)

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def version_ref(self) -> str:
        return f"{self.name}@v{self.version}"

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
    if kind == "model" and not any((path / "model" / m).is_file() for m in MODEL_MARKERS):
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


_MODEL_REF = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})@(v[0-9]+|latest)")


def is_model_ref(text: str) -> bool:
    return bool(_MODEL_REF.fullmatch(text or ""))


def name_dirs(home: Path, name: str) -> list[Path]:
    return [home / "models" / root / name for root in MODEL_ROOTS]


def model_versions(home: Path, name: str) -> list[Artifact]:
    """The finished models trained under `name` (pipeline output or `prefdata train` name), oldest
    first, each with its number: the one frozen into its stamp, else one past the one before."""
    found = []
    for d in name_dirs(home, name):
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if not p.name.startswith(".") and p.is_dir():
                a = find_done(p, "model")
                if a:
                    found.append(a)
    # Older stamps have no "created": the stamp file's mtime is the same moment.
    found.sort(key=lambda a: (a.manifest.get("created") or (a.path / STAMP).stat().st_mtime, a.path.name))
    prev, floor = 0, _removed_high(home, name)
    for a in found:
        fixed = a.manifest.get("version")
        if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed > prev:
            a.version = fixed
        else:  # stamped after the last removal (which froze every number before it): past what was removed
            a.version = max(prev, floor) + 1
        prev = a.version
    return found


def _removed_file(home: Path, name: str) -> Path:
    return home / "models" / ".removed" / name


def _removed_high(home: Path, name: str) -> int:
    """The highest number a removed version of `name` had: it is never handed out again."""
    try:
        return int(_removed_file(home, name).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def model_names(home: Path) -> list[str]:
    """Names with at least one finished version, in both roots."""
    names = set()
    for root in MODEL_ROOTS:
        d = home / "models" / root
        names |= {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")} if d.is_dir() else set()
    return sorted(n for n in names if model_versions(home, n))


def all_model_versions(home: Path) -> list[Artifact]:
    return [a for name in model_names(home) for a in model_versions(home, name)]


def _span(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> 'v1..v3, v5'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"v{r[0]}..v{r[-1]}" if len(r) > 1 else f"v{r[0]}" for r in runs)


def resolve_model_ref(home: Path, ref: str) -> str:
    """`name@vN` or `name@latest` -> that trained model's checkpoint folder."""
    return model_version(home, ref).ref


def model_version(home: Path, ref: str) -> Artifact:
    """The Artifact that `name@vN` / `name@latest` names."""
    from prefdata.errors import PrefdataError

    m = _MODEL_REF.fullmatch(ref or "")
    if not m:
        raise PrefdataError(f"not a model ref: '{ref}' (expected name@vN or name@latest)")
    name, which = m.groups()
    versions = model_versions(home, name)
    if not versions:
        known = ", ".join(model_names(home)) or "none yet"
        raise PrefdataError(f"no trained model named '{name}' (trained models: {known}); a pipeline train "
                            "step's output names it, and `prefdata train` names its models <kind>-<dataset> "
                            "(or --name)")
    if which == "latest":
        return versions[-1]
    n = int(which[1:])
    for a in versions:
        if a.version == n:
            return a
    raise PrefdataError(f"model '{name}' has versions {_span([a.version for a in versions])}, not {which}")


def version_of(home: Path, folder: Path) -> Artifact | None:
    """The version whose folder (or model folder) is `folder`, if it is one."""
    folder = Path(folder)
    base = (folder.parent if folder.name == "model" else folder).resolve()
    for a in model_versions(home, base.parent.name):
        if a.path.resolve() == base:
            return a
    return None


# ----------------------------------------------------------------------------- `prefdata train` runs

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_OWNED_TMP = re.compile(r"^\.(?:tmp|rm)-(\d+)-[0-9a-f]+$")  # .tmp-<owner pid>-<hex>, .rm-<pid>-<hex>


def check_model_name(name: str) -> str:
    from prefdata.errors import PrefdataError

    if not _NAME.fullmatch(name or ""):
        raise PrefdataError(f"bad model name {name!r}: letters, digits, '.', '_' and '-', starting with a letter "
                            "or digit, at most 128 characters")
    return name


def default_model_name(kind: str, dataset: str) -> str:
    """`<kind>-<dataset name>`: the store name of a ref (`quickstart-rlcd@v2` -> `dpo-quickstart-rlcd`), or
    a file's name without its extensions. Characters a ref cannot hold become '-'."""
    base = Path(dataset).name.split(".")[0] if ("/" in dataset or Path(dataset).suffix) else dataset.split("@")[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{kind}-{base}").strip("-._")[:128]
    return check_model_name(name or kind)


def sweep_stale(folder: Path) -> list[Path]:
    """Remove `.tmp-<pid>-*` (a run killed before it was whole) and `.rm-<pid>-*` (a removal killed half-way)
    folders under `folder` whose process is gone; returns what was removed."""
    gone = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _OWNED_TMP.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def stale_folders(folder: Path) -> list[Path]:
    return [p for p in (sorted(folder.iterdir()) if folder.is_dir() else [])
            if (m := _OWNED_TMP.match(p.name)) and not pid_alive(int(m.group(1)))]


@contextmanager
def name_lock(home: Path, name: str):
    """One writer at a time per model name (numbering, renames, removals), across processes."""
    d = home / "models" / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_run(home: Path, name: str) -> tuple[Path, Path]:
    """(staging folder, final folder) for one `prefdata train` run of `name`; stale runs are swept first."""
    parent = home / "models" / "trained" / check_model_name(name)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
    staging = parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    staging.mkdir()
    return staging, parent / run_id


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so a rename after it publishes whole files."""
    for root, dirs, files in os.walk(folder):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync(Path(root))


def publish_run(home: Path, staging: Path, final: Path, manifest: dict, card_md: str) -> Artifact:
    """Stamp a whole run (step.json last) and rename it to `final`: from then on it is a version."""
    fsync_tree(staging)
    with name_lock(home, final.parent.name):
        stamp(staging, "model", manifest, card_md)
        if os.environ.get("PREFDATA_TEST_PUBLISH_PAUSE"):  # test hook: a window before the rename
            time.sleep(float(os.environ["PREFDATA_TEST_PUBLISH_PAUSE"]))
        os.rename(staging, final)
        _fsync(final.parent)
    return version_of(home, final) or Artifact("model", final, manifest)


def freeze_numbers(home: Path, name: str) -> None:
    """Write each version's number into its stamp, so removing one never renumbers the others."""
    for a in model_versions(home, name):
        if a.manifest.get("version") != a.version:
            tmp = a.path / (STAMP + ".tmp")
            tmp.write_text(json.dumps({**a.manifest, "version": a.version}, indent=2, default=str))
            os.replace(tmp, a.path / STAMP)


def remove_version(home: Path, a: Artifact) -> None:
    """Freeze the numbers, then take the version out of the list in one rename and delete it."""
    with name_lock(home, a.name):
        freeze_numbers(home, a.name)
        mark = _removed_file(home, a.name)
        if a.version > _removed_high(home, a.name):  # a ref never names two different models
            mark.parent.mkdir(parents=True, exist_ok=True)
            tmp = mark.with_name(mark.name + ".tmp")
            tmp.write_text(f"{a.version}\n")
            os.replace(tmp, mark)
        aside = a.path.parent / f".rm-{os.getpid()}-{uuid.uuid4().hex}"
        os.rename(a.path, aside)
        _fsync(a.path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total

