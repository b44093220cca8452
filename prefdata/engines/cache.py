"""Content-addressed request cache: the reason a killed run resumes without redoing work.

The key is what determines an output: model, the sampling fields that change text, the messages,
the assistant prefix, the effective seed, the template version and the sample index. Batch size,
concurrency and token budgets are deliberately absent, so re-batching never invalidates a result.
SQLite in WAL mode commits each batch as it finishes; a SIGKILL loses at most the batch in flight.
Several processes may share the file; a corrupt one fails with a line naming it and `prefdata cache clear`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from prefdata.engines.base import ChatRequest, Completion, SamplingParams
from prefdata.sqlitedb import connect, explain, guard


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


class RequestCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        # Busy timeout, WAL set once with retry, errors that name the file: see prefdata/sqlitedb.py.
        self._db = connect(self.path, what="request cache", schema=(
            "CREATE TABLE IF NOT EXISTS gen (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS score (key TEXT PRIMARY KEY, value REAL NOT NULL)"))

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
