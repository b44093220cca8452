"""Content-addressed request cache: the reason a killed run resumes without redoing work.

The key is what determines an output: model, the sampling fields that change text, the messages,
the assistant prefix, the effective seed, the template version and the sample index. Batch size,
concurrency and token budgets are deliberately absent, so re-batching never invalidates a result.
SQLite in WAL mode commits each batch as it finishes; a SIGKILL loses at most the batch in flight.
Several processes may share the file; a corrupt one fails with a line naming it and `prefdata cache clear`.

Shards (the Ray executor on several machines). WAL needs shared memory between every process that
opens the file, so SQLite does not support it across machines on a network filesystem, and even
rollback-journal mode relies on file locks that NFS often gets wrong. So engine workers on other
nodes never open the main file: each worker process writes its own *shard*,
`<cache dir>/<cache name>.shards/<pool>.<worker>.<random>.sqlite`, with one writer, a rollback journal
(journal_mode=DELETE) and synchronous=FULL, so a committed batch is on disk (or on the server) when
the commit returns and a half-finished transaction is rolled back by the next opener. Only the driver
reads shards, and only shards whose writer is gone (see prefdata/executors/ray.py); `merge_shards`
copies each into the main cache in one transaction with INSERT OR IGNORE (keys are content hashes,
so an existing key already holds the same answer) and deletes the shard only after that commit. A
crash mid-merge therefore loses nothing (the shard is still there) and duplicates nothing (the
second merge inserts only what the first did not commit). A shard SQLite cannot read (torn by a
dying node, truncated by the filesystem) is set aside as `<shard>.corrupt` with a warning: its
requests are generated again, nothing else is affected. The local (single-machine) path never
touches shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
from pathlib import Path

from prefdata.engines.base import ChatRequest, Completion, SamplingParams
from prefdata.sqlitedb import TIMEOUT_S, CacheError, connect, explain, guard

_SCHEMA = ("CREATE TABLE IF NOT EXISTS gen (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
           "CREATE TABLE IF NOT EXISTS score (key TEXT PRIMARY KEY, value REAL NOT NULL)")


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_key(model_id: str, req: ChatRequest, params: SamplingParams, sample: int) -> str:
    fields = params.cache_fields()
    fields.pop("n")  # n only says how many samples; each sample has its own key
    fields.pop("seed")
    blob = _canon({"model": model_id, "params": fields, "messages": req.messages, "prefix": req.assistant_prefix,
                   "seed": params.seed + req.seed_offset, "template": req.template_version, "sample": sample})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def score_key(model_id: str, req: ChatRequest, completion: str) -> str:
    blob = _canon({"model": model_id, "messages": req.messages, "prefix": req.assistant_prefix,
                   "template": req.template_version, "completion": completion, "op": "score"})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _connect_shard(path: Path) -> sqlite3.Connection:
    """A shard: one writer, so no WAL (which cannot span machines) and no lock contention; FULL sync
    because the machine holding it may die, not only the process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"request cache shard {path}: cannot create its folder ({err.strerror or err})") from None
    with guard(path, "request cache shard"):
        db = sqlite3.connect(str(path), timeout=TIMEOUT_S, check_same_thread=False)
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=FULL")
        for stmt in _SCHEMA:
            db.execute(stmt)
        db.commit()
    return db


class RequestCache:
    def __init__(self, path: str | Path, *, shard: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        # Busy timeout, WAL set once with retry, errors that name the file: see prefdata/sqlitedb.py.
        self._db = _connect_shard(self.path) if shard else connect(self.path, what="request cache", schema=_SCHEMA)

    def _guard(self):
        return guard(self.path, "request cache")

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        with self._lock, self._guard():
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, value FROM gen WHERE key IN ({','.join('?' * len(chunk))})"
                for k, v in self._db.execute(q, chunk):
                    try:
                        out[k] = Completion(**json.loads(v))
                    except (ValueError, TypeError) as err:  # a row that is not what we wrote
                        raise explain(err, self.path, "request cache") from None
        return out

    def put_many(self, items: dict[str, Completion]) -> None:
        # Failed requests are never cached: a resumed run must retry them.
        rows = [(k, _canon(c.__dict__)) for k, c in items.items() if c.finish_reason != "error"]
        with self._lock, self._guard():
            self._db.executemany("INSERT OR REPLACE INTO gen VALUES (?, ?)", rows)
            self._db.commit()

    def get_scores(self, keys: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        with self._lock, self._guard():
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, value FROM score WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(dict(self._db.execute(q, chunk).fetchall()))
        return out

    def put_scores(self, items: dict[str, float]) -> None:
        with self._lock, self._guard():
            self._db.executemany("INSERT OR REPLACE INTO score VALUES (?, ?)", list(items.items()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock, self._guard():
            return self._db.execute("SELECT COUNT(*) FROM gen").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def merge(self, shard: Path) -> int:
        """Copy a shard's rows into this cache in one transaction; return how many were new.

        Raises CacheError naming the shard when SQLite cannot read it (the caller sets it aside);
        errors of this cache itself (a full disk) name this file."""
        with self._lock:
            try:
                # Attaching rolls back a transaction the shard's writer left half done (its hot journal).
                self._db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            except sqlite3.Error as err:
                raise explain(err, shard, "request cache shard") from None
            try:
                try:
                    check = self._db.execute("PRAGMA shard.quick_check").fetchall()
                    if check != [("ok",)]:
                        raise sqlite3.DatabaseError(f"database disk image is malformed ({check[0][0][:80]})")
                    tables = {r[0] for r in self._db.execute("SELECT name FROM shard.sqlite_master WHERE type='table'")}
                except sqlite3.Error as err:
                    raise explain(err, shard, "request cache shard") from None
                with self._guard():
                    before = self._db.total_changes
                    for table in ("gen", "score"):
                        if table in tables:
                            self._db.execute(f"INSERT OR IGNORE INTO main.{table} SELECT key, value FROM shard.{table}")
                    self._db.commit()
                    return self._db.total_changes - before
            finally:
                self._db.rollback()  # nothing is open after the commit; on an error, nothing half-inserted stays
                self._db.execute("DETACH DATABASE shard")


def shard_dir(cache_path: str | Path) -> Path:
    """Where the workers of a Ray run write their shards of the cache at `cache_path`."""
    p = Path(cache_path)
    return p.with_name(p.stem + ".shards")


def merge_shards(cache: RequestCache, shards, *, warn=None) -> int:
    """Merge each shard file into `cache`, then delete it; return the rows added.

    A shard SQLite cannot read is renamed `<shard>.corrupt` (kept for a look, never merged again)
    and reported through `warn` (default: a line on stderr); one still locked by a live writer is
    left for a later merge."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    added = 0
    for path in sorted(Path(p) for p in shards):
        if not path.is_file():
            continue
        try:
            added += cache.merge(path)
        except CacheError as err:
            if "locked" in str(err):
                continue
            if not str(err).startswith(f"request cache shard {path}"):
                raise  # the main cache failed (full disk, read-only): nothing to blame the shard for
            try:
                os.replace(path, path.with_name(path.name + ".corrupt"))
            except OSError:
                pass
            warn(f"{err.args[0].split(';')[0]}; set aside as {path.name}.corrupt, its requests will be "
                 "generated again")
            continue
        for suffix in ("", "-journal"):
            try:
                os.unlink(f"{path}{suffix}")
            except FileNotFoundError:
                pass
    return added
