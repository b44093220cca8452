"""The decisions log: one SQLite file (WAL) per reviewed version, under $PREFDATA_HOME/review/.

Append-only: a keypress adds a row and `undo` marks the annotator's latest row undone, so the file
is the full history and `review commit` can ship it. The live decision of an annotator on a pair is
their latest row not undone. Each write is its own transaction with synchronous=FULL, so it is on
disk before the browser is told "saved": kill -9 of the server (or of the machine) loses nothing.
Several servers (one per annotator) may share the file; SQLite's locking covers that.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from prefdata.errors import PrefdataError
from prefdata.sqlitedb import connect, guard

# What a decision means for the stored label; the page's keys map onto these (see app.KEYS).
DECISIONS = ("keep", "flip", "tie", "drop", "skip")
LABELS = ("keep", "flip", "tie", "drop")  # the ones that count as a label (skip is "not me")
ANNOTATOR_RE = re.compile(r"^[\w.@+-]{1,64}$")
CLAIM_TTL_S = 600.0  # a pair shown to someone stays theirs this long, so overlap 1 is not doubled

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS pairs (pair_id TEXT PRIMARY KEY, rank INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pairs_rank ON pairs(rank)",
    """CREATE TABLE IF NOT EXISTS decisions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL, annotator TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('keep','flip','tie','drop','skip')),
        key TEXT, swapped INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL, undone INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS decisions_pa ON decisions(pair_id, annotator)",
    "CREATE INDEX IF NOT EXISTS decisions_a ON decisions(annotator, seq)",
    "CREATE TABLE IF NOT EXISTS claims (pair_id TEXT, annotator TEXT, at REAL, PRIMARY KEY (pair_id, annotator))",
    """CREATE VIEW IF NOT EXISTS live AS SELECT d.* FROM decisions d JOIN
        (SELECT MAX(seq) AS m FROM decisions WHERE undone = 0 GROUP BY pair_id, annotator) l ON d.seq = l.m""",
)


def check_annotator(name: str) -> str:
    if not isinstance(name, str) or not ANNOTATOR_RE.match(name):
        raise PrefdataError(f"invalid annotator name '{name}': letters, digits and . _ @ + - (max 64)")
    return name


def db_path(version) -> Path:
    """The file for one store version; the content hash is in the name, so a store rebuilt with a
    different v3 never inherits the old v3's decisions."""
    from prefdata.store import safe_path

    return safe_path("review", version.name, f"{version.version}-{version.sha[:12]}.sqlite")


class ReviewDB:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = connect(self.path, schema=SCHEMA, what="review database")
        self._db.execute("PRAGMA synchronous=FULL")  # the default NORMAL may lose the last write on power loss
        self._lock = threading.Lock()  # Starlette runs sync handlers on a thread pool

    def _run(self, sql: str, args=(), *, write: bool = False):
        with self._lock, guard(self.path, "review database"):
            if not write:
                return self._db.execute(sql, args).fetchall()
            with self._db:  # one transaction, committed (and fsynced) on exit
                return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ setup

    def init_pairs(self, ranked_ids: list[str]) -> None:
        """Record the queue order once; later runs keep it, so a resumed session sees the same order."""
        with self._lock, guard(self.path, "review database"), self._db:
            if self._db.execute("SELECT 1 FROM pairs LIMIT 1").fetchone():
                return
            self._db.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?)",
                                 ((pid, r) for r, pid in enumerate(ranked_ids)))

    def set_meta(self, **kv) -> None:
        for k, v in kv.items():
            self._run("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)), write=True)

    def meta(self) -> dict[str, str]:
        return dict(self._run("SELECT key, value FROM meta"))

    # ------------------------------------------------------------------ queue

    _NEXT = """
        SELECT p.pair_id FROM pairs p WHERE p.rank < ?
          AND NOT EXISTS (SELECT 1 FROM live l WHERE l.pair_id = p.pair_id AND l.annotator = ?)
          AND (SELECT COUNT(*) FROM live l WHERE l.pair_id = p.pair_id AND l.decision != 'skip')
            + (SELECT COUNT(*) FROM claims c WHERE c.pair_id = p.pair_id AND c.annotator != ? AND c.at > ?
                 AND NOT EXISTS (SELECT 1 FROM live l WHERE l.pair_id = c.pair_id AND l.annotator = c.annotator))
            < ?
        ORDER BY p.rank LIMIT 1"""

    def _next_args(self, annotator: str, budget: int | None, overlap: int) -> tuple:
        return (budget if budget is not None else 1 << 62, annotator, annotator, time.time() - CLAIM_TTL_S, overlap)

    def next_pair(self, annotator: str, budget: int | None, overlap: int) -> str | None:
        """This annotator's next pair: the best-ranked one within the budget that they have not
        decided (or skipped) and that still needs labels: fewer than `overlap` annotators have
        labelled it or are looking at it now. Only a look: `claim_next` is what a server calls."""
        rows = self._run(self._NEXT, self._next_args(annotator, budget, overlap))
        return rows[0][0] if rows else None

    def claim_next(self, annotator: str, budget: int | None, overlap: int) -> str | None:
        """`next_pair`, claimed for this annotator in the same transaction. BEGIN IMMEDIATE takes the
        file's write lock before the look, so two servers (any processes) never both pick a pair
        that has room for one more: with next_pair and claim as two transactions, overlap 1 gave
        one pair to two annotators in 14 of 15 races."""
        with self._lock, guard(self.path, "review database"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(self._NEXT, self._next_args(annotator, budget, overlap)).fetchone()
                if row is not None:
                    self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (row[0], annotator, time.time()))
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        return row[0] if row else None

    def claim(self, pair_id: str, annotator: str) -> None:
        self._run("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (pair_id, annotator, time.time()), write=True)

    def has_pair(self, pair_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM pairs WHERE pair_id = ?", (pair_id,)))

    def offered(self, budget: int | None) -> int:
        n = self._run("SELECT COUNT(*) FROM pairs")[0][0]
        return n if budget is None else min(n, budget)

    # ------------------------------------------------------------------ decisions

    def decide(self, pair_id: str, annotator: str, decision: str, *, key: str = "", swapped: bool = False) -> int:
        if decision not in DECISIONS:
            raise PrefdataError(f"unknown decision '{decision}' (expected one of {', '.join(DECISIONS)})")
        if not self.has_pair(pair_id):
            raise PrefdataError(f"pair '{pair_id}' is not in this review")
        with self._lock, guard(self.path, "review database"), self._db:
            cur = self._db.execute("INSERT INTO decisions (pair_id, annotator, decision, key, swapped, at) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (pair_id, annotator, decision, key, int(swapped),
                                                                 time.time()))
            return int(cur.lastrowid)

    def decide_many(self, rows: list[tuple[str, str, str, bool]], *, key: str) -> tuple[int, int]:
        """Append (pair_id, annotator, decision, swapped) rows in one transaction (all or none), leaving
        out those equal to the annotator's standing decision. Returns (written, unchanged)."""
        for pid, ann, d, _ in rows:
            check_annotator(ann)
            if d not in DECISIONS:
                raise PrefdataError(f"unknown decision '{d}' (expected one of {', '.join(DECISIONS)})")
        with self._lock, guard(self.path, "review database"), self._db:
            known = {r[0] for r in self._db.execute("SELECT pair_id FROM pairs")}
            standing = {(p, a): d for p, a, d in self._db.execute("SELECT pair_id, annotator, decision FROM live")}
            written, now = 0, time.time()
            for pid, ann, d, swapped in rows:
                if pid not in known:
                    raise PrefdataError(f"pair '{pid}' is not in this review")
                if standing.get((pid, ann)) == d:
                    continue
                self._db.execute("INSERT INTO decisions (pair_id, annotator, decision, key, swapped, at) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (pid, ann, d, key, int(swapped), now))
                standing[(pid, ann)] = d
                written += 1
        return written, len(rows) - written

    def undo(self, annotator: str) -> str | None:
        """Take back this annotator's latest decision still standing; returns its pair (to show again)."""
        with self._lock, guard(self.path, "review database"), self._db:
            row = self._db.execute("SELECT seq, pair_id FROM decisions WHERE annotator = ? AND undone = 0 "
                                   "ORDER BY seq DESC LIMIT 1", (annotator,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE decisions SET undone = 1 WHERE seq = ?", (row[0],))
            return row[1]

    def live(self, annotator: str | None = None) -> list[dict]:
        sql, args = "SELECT pair_id, annotator, decision, key, swapped, at FROM live", ()
        if annotator is not None:
            sql, args = sql + " WHERE annotator = ?", (annotator,)
        cols = ("pair_id", "annotator", "decision", "key", "swapped", "at")
        return [dict(zip(cols, r)) for r in self._run(sql + " ORDER BY seq", args)]

    def log(self) -> list[dict]:
        cols = ("seq", "pair_id", "annotator", "decision", "key", "swapped", "at", "undone")
        return [dict(zip(cols, r)) for r in self._run(f"SELECT {', '.join(cols)} FROM decisions ORDER BY seq")]

    def recent(self, annotator: str, n: int = 8) -> list[dict]:
        return self.live(annotator)[-n:][::-1]
