"""The versioned dataset store: immutable, content-addressed versions with lineage.

    $PREFDATA_HOME/datasets/<name>/<vN>/{data/<split>-00000-of-00001.parquet, README.md, manifest.json, *.png}

A version is built in a hidden temp dir beside its final place and renamed in one step, so a reader
never sees half a version and a killed commit leaves nothing visible (its temp dir is swept by the
next commit). Numbers are handed out under a per-name lock so two writers never share a `vN`.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import prefdata
from prefdata.errors import PrefdataError, RefError

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^v(\d+)$")


def home() -> Path:
    return Path(os.environ.get("PREFDATA_HOME") or Path.home() / ".prefdata").expanduser()


def datasets_dir() -> Path:
    return home() / "datasets"


@dataclass(frozen=True)
class Version:
    name: str
    version: str  # "v3"
    sha: str  # content hash of the data files
    path: Path
    manifest: dict

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def card_path(self) -> Path:
        return self.path / "README.md"

    @property
    def number(self) -> int:
        return int(self.version[1:])

    def data_files(self, split: str | None = None) -> list[Path]:
        files = self.manifest["splits"]
        names = [split] if split else list(files)
        out = []
        for s in names:
            if s not in files:
                raise PrefdataError(f"{self.ref} has no split '{s}' (has: {', '.join(files)})")
            out += [self.path / f for f in files[s]["files"]]
        return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PrefdataError(f"invalid dataset name '{name}': use letters, digits, '.', '_' or '-' (max 128)")
    return name


# ----------------------------------------------------------------------------- reading


def _read_version(path: Path) -> Version:
    man = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return Version(name=man["name"], version=path.name, sha=man["content_hash"], path=path, manifest=man)


def list_versions(name: str | None = None) -> list[Version]:
    """Committed versions, oldest first; temp dirs of unfinished commits are invisible."""
    root = datasets_dir()
    names = [name] if name else (sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    out: list[Version] = []
    for n in names:
        d = root / n
        if not d.is_dir():
            continue
        nums = sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION_RE.match(p.name)))
        out += [_read_version(d / f"v{k}") for k in nums if (d / f"v{k}" / "manifest.json").is_file()]
    return out


def resolve(ref: str) -> Version:
    """`name@v3`, `name@latest`, `name`, `name@sha:<prefix>`, or the path of a version directory."""
    if not isinstance(ref, str) or not ref:
        raise RefError("empty dataset ref")
    p = Path(ref).expanduser()
    if (p / "manifest.json").is_file():
        return _read_version(p.resolve())
    name, _, sel = ref.partition("@")
    sel = sel or "latest"
    if not _NAME_RE.match(name):
        raise RefError(f"malformed dataset ref '{ref}' (expected name@vN, name@latest or name@sha:<prefix>)")
    versions = list_versions(name)
    if not versions:
        known = sorted({v.name for v in list_versions()})
        hint = f"known datasets: {', '.join(known)}" if known else f"the store at {datasets_dir()} is empty"
        raise RefError(f"unknown dataset '{name}' ({hint})")
    have = ", ".join(v.version for v in versions)
    if sel == "latest":
        return versions[-1]
    if sel.startswith("sha:"):
        prefix = sel[4:].lower()
        if len(prefix) < 4:
            raise RefError(f"'{ref}': give at least 4 hex digits of the content hash")
        hits = [v for v in versions if v.sha.startswith(prefix)]
        if len(hits) > 1:
            raise RefError(f"'{ref}' is ambiguous: {', '.join(v.ref for v in hits)}")
        if not hits:
            raise RefError(f"no version of '{name}' has content hash {prefix}… (versions: {have})")
        return hits[0]
    if not _VERSION_RE.match(sel):
        raise RefError(f"malformed version '{sel}' in '{ref}' (expected vN, latest or sha:<prefix>)")
    for v in versions:
        if v.version == sel:
            return v
    raise RefError(f"unknown version '{ref}' (versions of {name}: {have})")


def verify(version: Version, split: str | None = None) -> None:
    """Recompute the sha256 of every file the manifest lists (data, card, plots) and compare."""
    version.data_files(split)  # unknown split -> clear error
    for rel, expected in version.manifest["files"].items():
        f = version.path / rel
        if not f.is_file():
            raise PrefdataError(f"{version.ref}: missing file {rel}")
        if sha256_file(f) != expected:
            raise PrefdataError(f"{version.ref}: checksum mismatch: {rel} was changed after commit")


def load_table(ref: str, split: str = "train") -> pa.Table:
    v = resolve(ref)
    verify(v, split)
    return pa.concat_tables([pq.read_table(f) for f in v.data_files(split)])


def load(ref: str, split: str = "train"):
    """A `datasets.Dataset` for one split of a version, checksums verified first."""
    import datasets

    v = resolve(ref)
    verify(v, split)
    return datasets.Dataset(load_table(str(v.path), split))


# ----------------------------------------------------------------------------- writing


@contextmanager
def _lock(dir_: Path):
    with open(dir_ / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_stale(dir_: Path, max_age_s: float = 0) -> None:
    # A temp dir whose writer was killed. Age guard so a concurrent writer's dir is left alone.
    now = time.time()
    for p in dir_.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


def content_hash(split_files: dict[str, list[str]], file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for split in sorted(split_files):
        for f in split_files[split]:
            h.update(f"{split}\0{file_hashes[f]}\n".encode())
    return h.hexdigest()


def commit(name: str, data, *, kind: str = "pair", lineage: dict | None = None, command: str | None = None,
           card_sections: list[tuple[str, str]] | None = None, figures: dict | None = None) -> Version:
    """Write a new immutable version and return it; identical content returns the existing version."""
    from prefdata.store.card import render_card

    check_name(name)
    splits: dict[str, pa.Table] = data if isinstance(data, dict) else {"train": data}
    if not splits:
        raise PrefdataError(f"nothing to commit for '{name}': no splits")
    for s, t in splits.items():
        if not re.match(r"^[A-Za-z0-9_]+$", s):
            raise PrefdataError(f"invalid split name '{s}'")
        if not isinstance(t, pa.Table):
            raise PrefdataError(f"split '{s}' must be a pyarrow Table, got {type(t).__name__}")
    lineage = dict(lineage or {})
    dest_dir = datasets_dir() / name
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        probe = dest_dir / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise PrefdataError(f"store directory is not writable: {dest_dir} ({e.strerror or e})") from None

    tmp = dest_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        (tmp / "data").mkdir(parents=True)
        split_files: dict[str, list[str]] = {}
        hashes: dict[str, str] = {}
        for s, t in splits.items():
            rel = f"data/{s}-00000-of-00001.parquet"
            pq.write_table(t, tmp / rel)
            split_files[s] = [rel]
            hashes[rel] = sha256_file(tmp / rel)
        chash = content_hash(split_files, hashes)
        for v in list_versions(name):
            if v.sha == chash:
                shutil.rmtree(tmp, ignore_errors=True)
                return v

        images = {}
        for fig_name, fig in (figures or {}).items():
            fn = f"{fig_name}.png"
            fig.savefig(tmp / fn, dpi=110)
            images[fig_name] = fn
            try:
                import matplotlib.pyplot as plt

                plt.close(fig)
            except Exception:
                pass
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "kind": kind,
            "content_hash": chash,
            "splits": {s: {"rows": splits[s].num_rows, "files": split_files[s]} for s in splits},
            "columns": {s: [f"{f.name}: {f.type}" for f in splits[s].schema] for s in splits},
            "parents": list(lineage.get("parents", [])),
            "lineage": lineage,
            "command": command,
            "prefdata_version": prefdata.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with _lock(dest_dir):
            _sweep_stale(dest_dir, max_age_s=6 * 3600)
            existing = list_versions(name)
            for v in existing:
                if v.sha == chash:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return v
            number = existing[-1].number + 1 if existing else 1
            manifest["version"] = f"v{number}"
            card = render_card(name, f"v{number}", manifest, splits, images, card_sections or [], tmp)
            (tmp / "README.md").write_text(card, encoding="utf-8")
            manifest["files"] = {**hashes, "README.md": sha256_file(tmp / "README.md"),
                                 **{fn: sha256_file(tmp / fn) for fn in images.values()}}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if os.environ.get("PREFDATA_TEST_COMMIT_PAUSE"):
                # Test hook: a window in which the commit can be killed before the rename.
                time.sleep(float(os.environ["PREFDATA_TEST_COMMIT_PAUSE"]))
            final = dest_dir / f"v{number}"
            os.rename(tmp, final)
            _fsync_dir(dest_dir)
        return _read_version(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
