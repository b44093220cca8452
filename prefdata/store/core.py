"""The versioned dataset store: immutable, content-addressed versions with lineage.

    $PREFDATA_HOME/datasets/<name>/<vN>/{data/<split>-00000-of-0000N.parquet, README.md, manifest.json,
                                          manifest.sha256, *.png}

Data files hold FILE_ROWS rows each in row groups of ROW_GROUP_ROWS, whether the split was committed
whole or streamed in shards (`VersionWriter`), so the content hash depends on the rows alone.

A version is built in a hidden temp dir (`.tmp-<pid>-<uuid>`) beside its final place and renamed in
one step, so a reader never sees half a version and a killed commit leaves nothing visible; the next
commit removes the temp dir once its owner pid is gone. Numbers are handed out under a per-name
`flock` so two writers, in any processes, never share a `vN`. `manifest.sha256` lives outside the
manifest so a rewritten manifest is caught; a version that fails that or does not parse is reported
as corrupt (`scan`, `CorruptVersion`) while every other version keeps working.

`verify` recomputes the content hash from the data files as a commit does, so a data file rewritten
with its checksum updated in a re-summed manifest is still caught, and a commit reuses a version of
the same content hash only once that version verifies. A dataset or version directory must be a
real directory at its own place: a symlink leading anywhere else is refused for writing and reported
as corrupt for reading (`escape_reason`).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import prefdata
from prefdata.redact import redact, redact_obj
from prefdata.errors import PrefdataError, RefError

SCHEMA_VERSION = 2  # 2: manifest.sha256 beside manifest.json
# Always used with fullmatch: `$` would also match before a trailing newline ('nl\n').
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_RE = re.compile(r"v(\d+)")
_SPLIT_RE = re.compile(r"[A-Za-z0-9_]+")


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


def escape_reason(path: Path) -> str | None:
    """Why a path named inside the store does not lead to its own place there, or None.

    A dataset directory `datasets/<name>` or a version `datasets/<name>/vN` must be a real directory
    at that place: one that is (or sits under) a symlink leading anywhere else, outside the store
    or onto another version, is refused for writing and reported as corrupt for reading. A path not
    named under the store (a version directory copied elsewhere, given by path) is not judged here."""
    root = datasets_dir()
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return None
    try:
        real_root = root.resolve()
        want, got = real_root.joinpath(*rel.parts), Path(path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return f"{path} cannot be resolved ({getattr(e, 'strerror', None) or e})"
    if got == want:
        return None
    where = "outside the store" if got != real_root and real_root not in got.parents else "elsewhere in the store"
    return f"{path} is a symlink to {got}, {where} {real_root}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise PrefdataError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (max 128)")
    return name


# ----------------------------------------------------------------------------- reading

MANIFEST_SUM = "manifest.sha256"  # kept beside, not inside, the manifest: detects a rewritten one


class CorruptVersion(PrefdataError):
    """A version whose manifest does not parse or does not match its files; names the version."""

    def __init__(self, ref: str, reason: str):
        self.ref, self.reason = ref, reason
        super().__init__(f"{ref} is corrupt: {reason} (run `prefdata datasets verify {ref}`)")


@dataclass(frozen=True)
class Corrupt:
    """A listing entry for a version that could not be read; everything else keeps working."""
    name: str
    version: str
    path: Path
    reason: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _ref_of(path: Path) -> str:
    return f"{path.parent.name}@{path.name}"


def _check_manifest(man, ref: str) -> None:
    # The fields every reader indexes without a guard; a KeyError deep in `show` is no message.
    if not isinstance(man, dict):
        raise CorruptVersion(ref, "manifest.json is not a JSON object")
    for key, typ in (("name", str), ("kind", str), ("content_hash", str), ("splits", dict), ("files", dict),
                     ("created", str)):
        if not isinstance(man.get(key), typ):
            raise CorruptVersion(ref, f"manifest.json lacks a valid '{key}'")
    for s, info in man["splits"].items():
        if not (isinstance(info, dict) and isinstance(info.get("rows"), int) and isinstance(info.get("files"), list)
                and all(isinstance(f, str) for f in info["files"])):
            raise CorruptVersion(ref, f"manifest.json has a malformed split '{s}'")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in man["files"].items()):
        raise CorruptVersion(ref, "manifest.json has a malformed 'files' table")


def _read_sum(sum_file: Path, ref: str) -> str:
    try:
        return sum_file.read_text(encoding="ascii", errors="replace").strip()
    except OSError as e:
        raise CorruptVersion(ref, f"{MANIFEST_SUM} unreadable ({e.strerror or e})") from None


def _read_version(path: Path) -> Version:
    ref = _ref_of(path)
    if (why := escape_reason(path)) is not None:
        raise CorruptVersion(ref, why)
    try:
        raw = (path / "manifest.json").read_bytes()
    except OSError as e:
        raise CorruptVersion(ref, f"manifest.json unreadable ({e.strerror or e})") from None
    try:
        man = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptVersion(ref, f"manifest.json does not parse ({type(e).__name__})") from None
    sum_file = path / MANIFEST_SUM
    if sum_file.is_file() and _read_sum(sum_file, ref) != hashlib.sha256(raw).hexdigest():
        raise CorruptVersion(ref, f"manifest.json does not match {MANIFEST_SUM} (changed after commit)")
    _check_manifest(man, ref)
    if not sum_file.is_file() and (not isinstance(man.get("schema_version"), int) or man["schema_version"] >= 2):
        # Versions since schema 2 always carry the sum; only older ones may lack it.
        raise CorruptVersion(ref, f"{MANIFEST_SUM} is missing")
    # A stat per listed file (no hashing): a deleted card or data file shows in `list`, not only in `verify`.
    for rel in man["files"]:
        if not (path / rel).is_file():
            raise CorruptVersion(ref, f"missing file {rel}")
    return Version(name=man["name"], version=path.name, sha=man["content_hash"], path=path, manifest=man)


def _version_numbers(d: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION_RE.fullmatch(p.name)) and p.is_dir())


def scan(name: str | None = None) -> list[Version | Corrupt]:
    """Every version directory, oldest first: a Version, or a Corrupt entry saying why not."""
    root = datasets_dir()
    names = [name] if name else (sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    out: list[Version | Corrupt] = []
    for n in names:
        d = root / n
        if not d.is_dir():
            continue
        for k in _version_numbers(d):
            p = d / f"v{k}"
            try:
                out.append(_read_version(p))
            except CorruptVersion as e:
                out.append(Corrupt(n, p.name, p, e.reason))
    return out


def list_versions(name: str | None = None) -> list[Version]:
    """Readable committed versions, oldest first; temp dirs and corrupt versions are left out
    (`scan` reports the latter)."""
    return [v for v in scan(name) if isinstance(v, Version)]


def resolve(ref: str) -> Version:
    """`name@v3`, `name@latest`, `name`, `name@sha:<prefix>`, or the path of a version directory."""
    if not isinstance(ref, str) or not ref:
        raise RefError("empty dataset ref")
    p = Path(ref).expanduser()
    if (p / "manifest.json").is_file():
        # A path inside the store must be the version's own directory, not a symlink to elsewhere.
        if (why := escape_reason(p)) is not None:
            raise CorruptVersion(_ref_of(Path(os.path.abspath(p))), why)
        return _read_version(p.resolve())
    name, _, sel = ref.partition("@")
    sel = sel or "latest"
    if not _NAME_RE.fullmatch(name):
        raise RefError(f"malformed dataset ref '{ref}' (expected name@vN, name@latest or name@sha:<prefix>)")
    entries = scan(name)
    versions = [v for v in entries if isinstance(v, Version)]
    wanted = entries[-1].version if sel == "latest" and entries else sel
    for c in entries:
        if isinstance(c, Corrupt) and c.version == wanted:
            raise CorruptVersion(c.ref, c.reason)
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
    if not _VERSION_RE.fullmatch(sel):
        raise RefError(f"malformed version '{sel}' in '{ref}' (expected vN, latest or sha:<prefix>)")
    for v in versions:
        if v.version == sel:
            return v
    raise RefError(f"unknown version '{ref}' (versions of {name}: {have})")


def verify(version: Version, split: str | None = None) -> None:
    """Recompute the sha256 of every file the manifest lists (data, card, plots) and compare,
    recompute the content hash from the data files exactly as a commit does and compare it with the
    manifest's, and check the manifest's row counts against the Parquet footers. A version directory
    that is a symlink to elsewhere, or a listed file that is a symlink or leads out of the version,
    is corrupt too. Raises CorruptVersion.

    The content hash is what `@sha:` refs and commit-time dedup trust, so a parquet rewritten with
    its sha256 updated in a re-summed manifest (consistent tampering) is caught here."""
    version.data_files(split)  # unknown split -> clear error
    ref = version.ref
    if (why := escape_reason(version.path)) is not None:
        raise CorruptVersion(ref, why)
    real = version.path.resolve()
    sum_file = version.path / MANIFEST_SUM
    seen: dict[str, str] = {}

    def digest(rel: str) -> str:
        if rel in seen:
            return seen[rel]
        f = version.path / rel
        if f.is_symlink() or (f.exists() and real not in f.resolve().parents):
            raise CorruptVersion(ref, f"{rel} is a symlink; a version holds its own files")
        if not f.is_file():
            raise CorruptVersion(ref, f"missing file {rel}")
        try:
            seen[rel] = sha256_file(f)
        except OSError as e:
            raise CorruptVersion(ref, f"{rel} unreadable ({e.strerror or e})") from None
        return seen[rel]

    if sum_file.is_file() and _read_sum(sum_file, ref) != digest("manifest.json"):
        raise CorruptVersion(ref, f"manifest.json does not match {MANIFEST_SUM} (changed after commit)")
    for rel, expected in version.manifest["files"].items():
        if digest(rel) != expected:
            raise CorruptVersion(ref, f"checksum mismatch: {rel} was changed after commit")
    split_files = {s: info["files"] for s, info in version.manifest["splits"].items()}
    actual = content_hash(split_files, {rel: digest(rel) for fs in split_files.values() for rel in fs})
    if actual != version.manifest["content_hash"]:
        raise CorruptVersion(ref, f"content hash recomputed from the data is {actual[:12]}…, the manifest says "
                                  f"{version.manifest['content_hash'][:12]}… (data changed after commit)")
    for s, info in version.manifest["splits"].items():
        if split and s != split:
            continue
        try:
            rows = sum(pq.ParquetFile(version.path / f).metadata.num_rows for f in info["files"])
        except (OSError, pa.ArrowException) as e:
            raise CorruptVersion(ref, f"split '{s}' is unreadable ({e})") from None
        if rows != info["rows"]:
            raise CorruptVersion(ref, f"manifest says {info['rows']} rows in '{s}', the data has {rows}")


def verify_ref(ref: str) -> Version:
    """resolve + verify: the version, checked, or CorruptVersion naming it."""
    v = resolve(ref)
    verify(v)
    return v


# ----------------------------------------------------------------------------- the one reader

# Verifications that still hold, for this process: (what identifies the version's bytes, split).
_VERIFIED: set[tuple] = set()


def _identity(version: Version) -> tuple | None:
    """What a verification of `version` depends on: its real folder, its content hash, and the inode,
    size and times of its manifest, the manifest's sum and every file the manifest lists. A file
    rewritten in place, replaced or swapped for a symlink, or a version committed again at the same
    place, changes it; None when a file cannot be looked at (then `verify` says why)."""
    stats = []
    for rel in ("manifest.json", MANIFEST_SUM, *version.manifest["files"]):
        try:
            st = os.lstat(version.path / rel)
        except FileNotFoundError:
            if rel == MANIFEST_SUM:  # a schema-1 version has none
                continue
            return None
        except OSError:
            return None
        stats.append((rel, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return os.path.realpath(version.path), version.sha, tuple(stats)


def verify_once(version: Version, split: str | None = None) -> Version:
    """`verify`, done once per process for the same bytes: a version read again (a train step's input,
    then its trainer's dataset) is not hashed again, while a changed or re-committed one is."""
    key = (_identity(version), split)
    if key[0] is None or key not in _VERIFIED:
        verify(version, split)
        if key[0] is not None:
            _VERIFIED.add(key)
    return version


# A table as `load_table` returned it -> the digest of its rows (the version's content hash and split),
# so a step's input digest need not re-encode it. Keyed by id, dropped when the table is collected.
_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def _note_digest(table: pa.Table, digest: str) -> pa.Table:
    key = id(table)
    _DIGESTS[key] = (weakref.ref(table, lambda _ref, key=key: _DIGESTS.pop(key, None)), digest)
    return table


def stored_digest(table: pa.Table) -> str | None:
    """For a table that holds exactly one split of a verified version, as `load_table` returned it (or
    as `same_rows` passed it on): a digest of the version's content hash and the split. None for any
    other table: a slice, a table built from it, rows read from a file."""
    entry = _DIGESTS.get(id(table))
    return entry[1] if entry is not None and entry[0]() is table else None


def same_rows(source: pa.Table, table: pa.Table) -> pa.Table:
    """`table`, which holds exactly `source`'s rows and values (its columns reordered or re-typed
    losslessly), keeps `source`'s stored digest."""
    digest = stored_digest(source)
    return _note_digest(table, digest) if digest is not None and table is not source else table


def load_table(ref: str | Version, split: str = "train") -> pa.Table:
    """The one reader of a version: resolved (a Version is taken as it is), verified once per process
    (`verify_once`), and one split's data files as an Arrow table."""
    v = ref if isinstance(ref, Version) else resolve(ref)
    verify_once(v, split)
    table = pa.concat_tables([pq.read_table(f) for f in v.data_files(split)])
    digest = hashlib.sha256(f"{v.sha}\0{split}".encode()).hexdigest()
    return _note_digest(table, digest)


def load(ref: str | Version, split: str = "train"):
    """A `datasets.Dataset` for one split of a version, checksums verified first."""
    import datasets

    return datasets.Dataset(load_table(ref, split))


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


_HOST = socket.gethostname()
_TMP_RE = re.compile(r"^\.tmp-(\d+)-[0-9a-f]+$")  # .tmp-<owner pid>-<uuid>
_LEGACY_TMP_AGE_S = 6 * 3600  # temp dirs without an owner pid (older prefdata) keep the old age guard


def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this host? (The one check behind every stale-lock and temp sweep.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _sweep_stale(dir_: Path) -> None:
    """Remove temp dirs of commits whose writer is gone. The owner pid is in the dir's name (so it is
    there from the first instant) and its host in `.owner`; a dir from another host, or one whose
    owner still runs, is left alone, since it may be a live commit."""
    for p in dir_.glob(".tmp-*"):
        try:
            m = _TMP_RE.match(p.name)
            if m:
                owner = p / ".owner"
                host = json.loads(owner.read_text()).get("host") if owner.is_file() else _HOST
                if host != _HOST or pid_alive(int(m.group(1))):
                    continue
            elif time.time() - p.stat().st_mtime <= _LEGACY_TMP_AGE_S:
                continue
            shutil.rmtree(p, ignore_errors=True)
        except (OSError, ValueError):
            continue  # raced with its owner or another sweeper; try again next commit


def content_hash(split_files: dict[str, list[str]], file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for split in sorted(split_files):
        for f in split_files[split]:
            h.update(f"{split}\0{file_hashes[f]}\n".encode())
    return h.hexdigest()


ROW_GROUP_ROWS = 8192  # rows per Parquet row group; FILE_ROWS per data file (a multiple of it)
FILE_ROWS = 32 * ROW_GROUP_ROWS


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns and types: a shard whose optional column was all null
    (type null) is cast to the type the other shards gave it."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _refuse_escape(dataset_dir: Path) -> None:
    """A commit never writes through a symlink that leads out of the dataset's place in the store."""
    if (dataset_dir.exists() or dataset_dir.is_symlink()) and (why := escape_reason(dataset_dir)) is not None:
        raise PrefdataError(f"refusing to write the dataset there: {why}")


def _reusable(name: str, chash: str, checked: dict[str, bool]) -> Version | None:
    """The existing version of `name` whose content hash is `chash` and that still verifies (its
    files re-hashed, its content hash recomputed), or None. A match that fails is passed over with a
    warning, so re-importing good data commits a good version instead of returning a damaged one.
    `checked` remembers verdicts across the two looks a commit takes (before and under the lock)."""
    import sys

    for v in list_versions(name):
        if v.sha != chash:
            continue
        if v.ref not in checked:
            try:
                verify(v)
                checked[v.ref] = True
            except CorruptVersion as e:
                checked[v.ref] = False
                print(f"warning: {v.ref} has this content hash but is corrupt ({e.reason}); committing a new version",
                      file=sys.stderr)
        if checked[v.ref]:
            return v
    return None


def _refuse_kind_change(name: str, kind: str) -> None:
    """Refuse a commit whose kind differs from the latest readable version's: `name@latest` would
    silently start holding another kind of rows (prompts where pairs were)."""
    versions = list_versions(name)
    if versions and (had := versions[-1].manifest.get("kind")) != kind:
        raise PrefdataError(f"{versions[-1].ref} holds '{had}' rows and this commit holds '{kind}' rows; "
                            f"use another --name, or --force-kind to make {name}@latest a '{kind}' dataset")


class VersionWriter:
    """A version written shard by shard: `write(split, table)` spools each shard to disk beside the
    version's temp dir, `commit(...)` lays the rows out in data files of FILE_ROWS rows with row
    groups of ROW_GROUP_ROWS, then names, cards and renames the version as `commit()` does. The
    layout depends on the rows only, never on how they were sharded, so the content hash of a split
    written in shards of 3 equals the one written whole. Memory holds one row group, not the split.

        with store.VersionWriter("pairs") as w:
            for shard in shards: w.write("train", shard)
            version = w.commit(kind="pair", lineage=...)

    Leaving the block without commit (an error, a kill) leaves nothing visible; a dead writer's temp
    dir is swept by the next commit.
    """

    def __init__(self, name: str):
        check_name(name)
        self.name = name
        self.dest_dir = datasets_dir() / name
        _refuse_escape(self.dest_dir)
        try:
            self.dest_dir.mkdir(parents=True, exist_ok=True)
            probe = self.dest_dir / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise PrefdataError(f"store directory is not writable: {self.dest_dir} ({e.strerror or e})") from None
        _refuse_escape(self.dest_dir)  # raced with a symlink swapped in before mkdir
        _sweep_stale(self.dest_dir)
        self.tmp = self.dest_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        (self.tmp / "spool").mkdir(parents=True)
        (self.tmp / ".owner").write_text(json.dumps({"pid": os.getpid(), "host": _HOST}))
        self._parts: dict[str, list[Path]] = {}
        self._schema: dict[str, pa.Schema] = {}
        self._rows: dict[str, int] = {}
        self._dups: dict = {}
        self._summary: dict[str, list[pa.Table]] = {}
        self._done = False

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def abort(self) -> None:
        """Drop everything written so far (a no-op after commit)."""
        if not self._done:
            self._done = True
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def rows(self) -> dict[str, int]:
        return dict(self._rows)

    def write(self, split: str, table: pa.Table) -> None:
        from prefdata.store.card import summarize
        from prefdata.store.checks import DuplicateCounter, check_values

        if not _SPLIT_RE.fullmatch(split):
            raise PrefdataError(f"invalid split name '{split}'")
        if not isinstance(table, pa.Table):
            raise PrefdataError(f"split '{split}' must be a pyarrow Table, got {type(table).__name__}")
        check_values(table, f"{self.name}[{split}]", offset=self._rows.get(split, 0))
        parts = self._parts.setdefault(split, [])
        part = self.tmp / "spool" / f"{split}-{len(parts):06d}.parquet"
        pq.write_table(table, part)
        parts.append(part)
        try:
            self._schema[split] = (pa.unify_schemas([self._schema[split], table.schema], promote_options="permissive")
                                   if split in self._schema else table.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise PrefdataError(f"{self.name}[{split}]: rows from row {self._rows[split] + 1} on have columns "
                                f"whose types differ from the rows before ({e})") from None
        self._rows[split] = self._rows.get(split, 0) + table.num_rows
        self._dups.setdefault(split, DuplicateCounter()).add(table)
        self._summary.setdefault(split, []).append(summarize(table))

    def _lay_out(self, split: str) -> tuple[list[str], dict[str, str]]:
        """Rewrite a split's spooled shards as its data files; returns (relative paths, sha256 each)."""
        schema, rows = self._schema[split], self._rows[split]
        n_files = max(1, -(-rows // FILE_ROWS))
        rels = [f"data/{split}-{k:05d}-of-{n_files:05d}.parquet" for k in range(n_files)]
        (self.tmp / "data").mkdir(exist_ok=True)
        state = {"file": 0, "in_file": 0, "writer": None}

        def emit(t: pa.Table) -> None:
            if state["writer"] is None:
                state["writer"] = pq.ParquetWriter(self.tmp / rels[state["file"]], schema)
            # One chunk per column, so page boundaries depend on the values only.
            state["writer"].write_table(t.combine_chunks(), row_group_size=ROW_GROUP_ROWS)
            state["in_file"] += t.num_rows
            if state["in_file"] >= FILE_ROWS:
                state["writer"].close()
                state.update(file=state["file"] + 1, in_file=0, writer=None)

        buf: list[pa.Table] = []
        buffered = 0
        for part in self._parts[split]:
            t = _conform(pq.read_table(part), schema)
            part.unlink()
            buf.append(t)
            buffered += t.num_rows
            while buffered >= ROW_GROUP_ROWS:
                cat = pa.concat_tables(buf)
                emit(cat.slice(0, ROW_GROUP_ROWS))
                buf, buffered = [cat.slice(ROW_GROUP_ROWS)], buffered - ROW_GROUP_ROWS
        if buffered or state["writer"] is None and state["file"] == 0:
            emit(pa.concat_tables(buf) if buf else schema.empty_table())
        if state["writer"] is not None:
            state["writer"].close()
        return rels, {r: sha256_file(self.tmp / r) for r in rels}

    def commit(self, *, kind: str = "pair", lineage: dict | None = None, command: str | None = None,
               card_sections: list[tuple[str, str]] | None = None, figures: dict | None = None,
               allow_kind_change: bool = True) -> Version:
        """Write the version and return it; identical content returns the existing version once it
        verifies (a corrupt or tampered match is passed over and a new version committed).
        `allow_kind_change=False` refuses a kind other than the latest version's (`--force-kind`)."""
        if self._done:
            raise PrefdataError(f"version writer for '{self.name}' is already closed")
        if not self._parts:
            raise PrefdataError(f"nothing to commit for '{self.name}': no splits")
        if not allow_kind_change:
            _refuse_kind_change(self.name, kind)
        lineage = dict(lineage or {})
        try:
            split_files: dict[str, list[str]] = {}
            hashes: dict[str, str] = {}
            for s in self._parts:
                split_files[s], h = self._lay_out(s)
                hashes.update(h)
            shutil.rmtree(self.tmp / "spool", ignore_errors=True)
            chash = content_hash(split_files, hashes)
            checked: dict[str, bool] = {}
            if (same := _reusable(self.name, chash, checked)) is not None:
                self.abort()
                return same
            images = _save_figures(self.tmp, figures or {})
            manifest = self._manifest(kind, chash, split_files, lineage, command)
            summaries = {s: pa.concat_tables(p, promote_options="permissive") for s, p in self._summary.items()}
            with _lock(self.dest_dir):
                _refuse_escape(self.dest_dir)
                if not allow_kind_change:
                    _refuse_kind_change(self.name, kind)
                if (same := _reusable(self.name, chash, checked)) is not None:
                    self.abort()
                    return same
                final = self._publish(manifest, hashes, images, summaries, card_sections or [])
            return _read_version(final)
        except BaseException:
            self.abort()
            raise

    def _manifest(self, kind: str, chash: str, split_files: dict[str, list[str]], lineage: dict,
                  command: str | None) -> dict:
        """The manifest less what is known only under the lock (the version number, the files' sums)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "kind": kind,
            "content_hash": chash,
            "splits": {s: {"rows": self._rows[s], "files": split_files[s]} for s in split_files},
            "duplicates": {s: self._dups[s].counts() for s in split_files},
            "columns": {s: [f"{f.name}: {f.type}" for f in self._schema[s]] for s in split_files},
            "parents": list(lineage.get("parents", [])),
            # Whoever commits (pipeline, import, trainers, curation), no credential is kept.
            "lineage": redact_obj(lineage),
            "command": redact(command),
            "prefdata_version": prefdata.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _publish(self, manifest: dict, hashes: dict[str, str], images: dict[str, str], summaries: dict,
                 card_sections: list[tuple[str, str]]) -> Path:
        """Under the name's lock: number the version, write its card and manifest, and rename the temp
        dir into place. Returns the version's directory."""
        from prefdata.store.card import render_card

        dest_dir, tmp = self.dest_dir, self.tmp
        # Numbered past every vN directory, corrupt ones included, so a new version never lands on
        # (or is refused by) a damaged one.
        nums = _version_numbers(dest_dir)
        number = nums[-1] + 1 if nums else 1
        manifest["version"] = f"v{number}"
        card = render_card(self.name, f"v{number}", manifest, summaries, images, card_sections, tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        manifest["files"] = {**hashes, "README.md": sha256_file(tmp / "README.md"),
                             **{fn: sha256_file(tmp / fn) for fn in images.values()}}
        blob = json.dumps(manifest, indent=2, default=str).encode("utf-8")
        (tmp / "manifest.json").write_bytes(blob)
        (tmp / MANIFEST_SUM).write_text(hashlib.sha256(blob).hexdigest() + "\n", encoding="ascii")
        (tmp / ".owner").unlink()
        _fsync_files(tmp)
        final = dest_dir / f"v{number}"
        _refuse_escape(dest_dir)
        os.rename(tmp, final)
        self._done = True
        _fsync_dir(dest_dir)
        return final


def _save_figures(tmp: Path, figures: dict) -> dict[str, str]:
    """Each figure saved as `<name>.png` in the version; returns name -> file name."""
    images = {}
    for fig_name, fig in figures.items():
        fn = f"{fig_name}.png"
        fig.savefig(tmp / fn, dpi=110)
        images[fig_name] = fn
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:
            pass
    return images


def _fsync_files(tmp: Path) -> None:
    """Every file of a finished version on disk before it is renamed into place."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def commit(name: str, data, *, kind: str = "pair", lineage: dict | None = None, command: str | None = None,
           card_sections: list[tuple[str, str]] | None = None, figures: dict | None = None,
           allow_kind_change: bool = True) -> Version:
    """Write a new immutable version and return it; identical content returns the existing version
    (once it verifies). `data`: a table (the train split) or {split: table}; for data that does not
    fit in memory, write it in shards with `VersionWriter` (same layout, same content hash).
    `allow_kind_change=False` refuses to commit a kind other than the latest version's."""
    if not allow_kind_change:
        _refuse_kind_change(check_name(name), kind)  # before any row is written
    check_name(name)
    splits: dict[str, pa.Table] = data if isinstance(data, dict) else {"train": data}
    if not splits:
        raise PrefdataError(f"nothing to commit for '{name}': no splits")
    for s, t in splits.items():
        if not _SPLIT_RE.fullmatch(s):
            raise PrefdataError(f"invalid split name '{s}'")
        if not isinstance(t, pa.Table):
            raise PrefdataError(f"split '{s}' must be a pyarrow Table, got {type(t).__name__}")
    with VersionWriter(name) as w:
        for s, t in splits.items():
            w.write(s, t)
        return w.commit(kind=kind, lineage=lineage, command=command, card_sections=card_sections, figures=figures,
                        allow_kind_change=allow_kind_change)
