"""Issue 24, the review server: a request body of any size is refused before it fills memory, and
`--overlap 1` never gives one pair to two annotators, however their page loads race."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from starlette.testclient import TestClient
from test_review import _wait_for_url  # the one wait for the server's URL

from prefdata import store
from prefdata.review.app import ReviewState, create_app
from prefdata.review.db import ReviewDB, db_path
from prefdata.schema import validate

LIMIT = 1 << 20  # the promised request body limit, 1 MiB


def _pairs(n: int) -> list[dict]:
    return [{"id": f"p{i:03d}", "prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}",
             "label_prob": 0.5 + 0.4 * i / n} for i in range(n)]


@pytest.fixture
def pairs40():
    return store.commit("race", validate(_pairs(40), "pair"), kind="pair")


def _state(version, annotator: str, overlap: int = 1) -> ReviewState:
    # Its own ReviewDB, so its own SQLite connection: like a second `prefdata review` process.
    return ReviewState(version, store.load_table(str(version.path)), annotator, budget=None, overlap=overlap)


def _client(state: ReviewState) -> TestClient:
    c = TestClient(create_app(state), base_url="http://127.0.0.1:8765")
    assert c.get(f"/?token={state.token}").status_code == 200
    return c


def _shown(page: str) -> str | None:
    m = re.search(r'id="pair" data-id="([^"]*)"', page)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- overlap 1 under races


def test_overlap_one_never_gives_a_pair_to_two_annotators_under_racing_page_loads(pairs40):
    """Four annotators' servers on one decisions file, each page load started at the same instant
    (a barrier per round), each shown pair labelled at once: every pair is shown to exactly one
    of them. With the look-up and the claim as two transactions most rounds doubled a pair."""
    names = ["ann", "bea", "cal", "dee"]
    states = [_state(pairs40, n) for n in names]
    clients = [_client(s) for s in states]  # the login's page load claims each one's first pair
    firsts = [st.db.log() for st in states]  # nothing decided yet
    assert all(f == [] for f in firsts)
    shown: dict[str, list[str]] = {n: [] for n in names}
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def annotate(i: int):
        st, c = states[i], clients[i]
        try:
            for _ in range(12):
                barrier.wait(timeout=30)
                pid = _shown(c.get("/").text)
                if pid is None:
                    continue
                shown[names[i]].append(pid)
                r = c.post("/decide", json={"pair_id": pid, "key": "t"},
                           headers={"X-CSRF-Token": st.csrf, "Content-Type": "application/json"})
                assert r.status_code == 200, r.text
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    every = [p for n in names for p in shown[n]]
    doubled = sorted({p for p in every if every.count(p) > 1})
    assert doubled == [], {p: [n for n in names if p in shown[n]] for p in doubled}
    assert len(every) == 40  # 4 x 12 rounds, 40 pairs: all labelled, then nothing left
    live = states[0].db.live()
    assert len(live) == 40 and len({d["pair_id"] for d in live}) == 40


def test_claim_next_is_one_transaction_across_connections(tmp_path):
    """At the database: eight connections (as eight servers), all asking at once, overlap 1, get
    eight different pairs."""
    path = tmp_path / "r.sqlite"
    ReviewDB(path).init_pairs([f"x{i}" for i in range(20)])
    dbs = [ReviewDB(path) for _ in range(8)]
    got: list[str | None] = [None] * 8
    barrier = threading.Barrier(8)

    def take(i):
        barrier.wait(timeout=30)
        got[i] = dbs[i].claim_next(f"a{i}", None, 1)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(f"x{i}" for i in range(8))
    # Overlap 2: a ninth and tenth annotator may join the two best-ranked pairs, never a third on one.
    more = [ReviewDB(path).claim_next(a, None, 2) for a in ("b1", "b2", "b3")]
    assert more == ["x0", "x1", "x2"]


# ----------------------------------------------------------------------------- request body size


def test_a_body_over_the_limit_is_refused_with_413(pairs40):
    st = _state(pairs40, "ann")
    c = _client(st)
    h = {"X-CSRF-Token": st.csrf, "Content-Type": "application/json"}
    pid = _shown(c.get("/").text)
    big = b'{"pair_id": "%s", "key": "t", "pad": "%s"}' % (pid.encode(), b"x" * LIMIT)
    r = c.post("/decide", content=big, headers=h)
    assert r.status_code == 413 and "over 1024 KiB" in r.text
    assert st.db.log() == []  # nothing decided

    def chunks():  # no Content-Length: chunked, refused once the limit is passed
        yield b'{"pair_id": "%s", "key": "t", "pad": "' % pid.encode()
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = c.post("/decide", content=chunks(), headers=h)
    assert r.status_code == 413 and st.db.log() == []
    r = c.post("/undo", content=b"[" * (LIMIT + 1), headers=h)
    assert r.status_code == 413
    # Just under the limit is an ordinary decision.
    ok = b'{"pair_id": "%s", "key": "t", "pad": "%s"}' % (pid.encode(), b"x" * (LIMIT - 100))
    assert c.post("/decide", content=ok, headers=h).status_code == 200
    assert [d["pair_id"] for d in st.db.live()] == [pid]




def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory is read from /proc (Linux)")
def test_the_real_server_refuses_a_100_mb_body_without_reading_it(pairs40):
    """`prefdata review` itself (uvicorn): a body declared as 100 MB, and a chunked one as long, are
    answered 413 and never held in the server's memory."""
    cmd = [sys.executable, "-m", "prefdata.cli", "review", "race@v1", "--port", "0", "--annotator", "kim"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        url = _wait_for_url(proc)
        base, query = url.split("/?")
        with httpx.Client(base_url=base, follow_redirects=True, timeout=20) as c:
            page = c.get("/?" + query).text
            csrf = re.search(r'name="csrf" content="([^"]+)"', page).group(1)
            h = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
            def body(n_chunks: int):
                for _ in range(n_chunks):
                    yield b"x" * (1 << 20)

            before = _peak_rss_mb(proc.pid)
            t0 = time.monotonic()
            try:
                r = c.post("/decide", content=body(100), headers={**h, "Content-Length": str(100 << 20)})
                status = r.status_code
            except httpx.TransportError:  # the server answered and closed while we were still sending
                status = 413
            assert status == 413 and time.monotonic() - t0 < 30
            try:
                status = c.post("/decide", content=body(100), headers=h).status_code
            except httpx.TransportError:
                status = 413
            assert status == 413
            # Reading either body whole would have raised the server's peak memory by 100 MB or more.
            assert _peak_rss_mb(proc.pid) - before < 40, (before, _peak_rss_mb(proc.pid))
        assert ReviewDB(db_path(pairs40)).log() == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
