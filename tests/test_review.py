"""Human review (prefdata/review): the server's token, CSRF and escaping, durable decisions and resume
(also across kill -9 of the real command), queue order and overlap, kappa by hand, the commit, and a
real browser (Debian's chromium through playwright; skipped when chromium is not installed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from prefdata import store
from prefdata.review.agreement import annotator_agreement, cohen_kappa, fleiss_kappa
from prefdata.review.app import KEYS, ReviewState, create_app, decision_for, is_swapped
from prefdata.review.commit import commit_review
from prefdata.review.db import LABELS, ReviewDB, db_path
from prefdata.review.rank import priority, vote_spread
from prefdata.schema import validate

EVIL_PROMPT = '<script>alert("p")</script> and "><img src=x onerror=alert(1)>'
EVIL_ANSWER = '"><img src=x onerror=alert(2)> <script>alert("a")</script>'


def _pairs() -> list[dict]:
    # label_prob / votes chosen so the queue order is p2 (0.5), p0 (0.55, spread 1), p4 (0.55, spread 0),
    # p3 (0.6), p1 (0.9), p5 (0.99).
    spec = [("p0", 0.55, [1.0, -1.0]), ("p1", 0.9, [1.0, 1.0]), ("p2", 0.5, [0.2, 0.2]),
            ("p3", 0.6, [0.5, 0.5]), ("p4", 0.55, [0.3, 0.3]), ("p5", 0.99, [2.0, 2.0])]
    return [{"id": pid, "prompt": f"question {pid}?", "chosen": f"good answer to {pid} with more words",
             "rejected": f"bad answer {pid}", "label_prob": p, "votes": v, "chosen_score": 1.0,
             "rejected_score": 0.0, "strength_mean": float(np.mean(v))} for pid, p, v in spec]


@pytest.fixture
def toy():
    return store.commit("toy", validate(_pairs(), "pair"), kind="pair")


def _state(version, annotator="ann", **kw) -> ReviewState:
    kw.setdefault("budget", None)
    kw.setdefault("overlap", 1)
    return ReviewState(version, store.load_table(str(version.path)), annotator, **kw)


def _client(state: ReviewState, login: bool = True) -> TestClient:
    c = TestClient(create_app(state), base_url="http://127.0.0.1:8765")
    if login:
        assert c.get(f"/?token={state.token}").status_code == 200
    return c


def _post(c: TestClient, state: ReviewState, url: str, body: dict, **headers):
    h = {"X-CSRF-Token": state.csrf, "Content-Type": "application/json", **headers}
    return c.post(url, json=body, headers=h)


def _shown(c: TestClient) -> str | None:
    m = re.search(r'id="pair" data-id="([^"]*)"', c.get("/").text)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- security


def test_token_required_and_exchanged_for_a_strict_cookie(toy):
    st = _state(toy)
    c = _client(st, login=False)
    assert c.get("/").status_code == 401
    assert c.post("/decide", json={"pair_id": "p0", "key": "1"}).status_code == 401
    assert c.get("/?token=wrong").status_code == 403
    r = c.get(f"/?token={st.token}&pair=p3", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?pair=p3"  # the token leaves the URL
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and st.token.lower() in cookie
    page = c.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    forged = TestClient(create_app(st), base_url="http://127.0.0.1:8765", cookies={st.cookie: "not-the-token"})
    assert forged.get("/").status_code == 403


def test_csrf_and_origin_checked_on_every_post(toy):
    st = _state(toy)
    c = _client(st)
    body = {"pair_id": "p2", "key": "1"}
    assert c.post("/decide", json=body).status_code == 403
    assert _post(c, st, "/decide", body, **{"X-CSRF-Token": "forged"}).status_code == 403
    assert _post(c, st, "/undo", {}, **{"X-CSRF-Token": ""}).status_code == 403
    assert _post(c, st, "/decide", body, Origin="http://evil.example").status_code == 403
    form = c.post("/decide", content="pair_id=p2&key=1",
                  headers={"X-CSRF-Token": st.csrf, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert st.db.live() == []  # nothing refused was recorded
    assert _post(c, st, "/decide", body, Origin="http://127.0.0.1:8765").status_code == 200
    assert [d["pair_id"] for d in st.db.live()] == ["p2"]


def test_dataset_text_is_escaped(toy):
    rows = [{"id": 'e"1<b>', "prompt": EVIL_PROMPT, "chosen": EVIL_ANSWER, "rejected": "plain " + EVIL_ANSWER}]
    v = store.commit("evil", validate(rows, "pair"), kind="pair")
    st = _state(v)
    html = _client(st).get("/").text
    assert html.count("<script") == 1  # ours, with its nonce
    assert "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&quot;p&quot;)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert 'data-id="e&quot;1&lt;b&gt;"' in html


# ----------------------------------------------------------------------------- queue and decisions


def test_queue_order_by_confidence_then_family_disagreement(toy):
    table = store.load_table(str(toy.path))
    assert priority(table) == ["p2", "p0", "p4", "p3", "p1", "p5"]
    assert vote_spread(table)[0] == pytest.approx(1.0)
    bare = pa.table({"id": ["a", "b", "a", "c"]})  # never voted: stored order, repeated ids once
    assert priority(bare) == ["a", "b", "c"]


def test_keys_page_and_undo(toy):
    st = _state(toy)
    c = _client(st)
    assert _shown(c) == "p2"
    html = c.get("/").text
    assert "decided 0 of 6" in html and "Voter families" in html and "length ratio" in html
    assert "<ins>" in html or "<del>" in html  # the word diff
    key = "1" if not is_swapped("ann", "p2") else "2"  # the stored chosen, wherever it is on screen
    r = _post(c, st, "/decide", {"pair_id": "p2", "key": key})
    assert r.status_code == 200 and r.json()["next"] == "/"
    assert st.db.live()[0]["decision"] == "keep"
    assert _shown(c) == "p0"
    for k in "tds":
        _post(c, st, "/decide", {"pair_id": _shown(c), "key": k})
    assert [d["decision"] for d in st.db.live()] == ["keep", "tie", "drop", "skip"]
    r = _post(c, st, "/undo", {})
    assert r.json()["next"] == "/?pair=p3" and _shown(c) == "p3"  # undone: first in line again
    assert "already" not in c.get("/?pair=p3").text and c.get("/?pair=nope").status_code == 404
    assert _post(c, st, "/decide", {"pair_id": "p0", "key": "x"}).status_code == 400
    assert _post(c, st, "/decide", {"pair_id": "zz", "key": "1"}).status_code == 404


def test_both_sides_map_to_the_stored_label():
    assert {decision_for(k, False) for k in "12"} == {"keep", "flip"}
    assert decision_for("1", True) == "flip" and decision_for("2", True) == "keep"
    assert set(KEYS.values()) == {"keep", "flip", "tie", "drop", "skip"}
    # The layout differs across pairs, so answer 1 is not always the stored chosen.
    assert len({is_swapped("ann", f"p{i}") for i in range(20)}) == 2


def test_decisions_survive_a_restart_and_the_queue_resumes(toy):
    st = _state(toy)
    c = _client(st)
    for _ in range(2):
        _post(c, st, "/decide", {"pair_id": _shown(c), "key": "t"})
    st.db.close()
    st2 = _state(toy)  # a new server: new token, new connection, same file
    assert st2.token != st.token
    c2 = _client(st2)
    assert "decided 2 of 6" in c2.get("/").text and _shown(c2) == "p4"
    assert [d["pair_id"] for d in st2.db.live()] == ["p2", "p0"]


def test_annotator_queues_overlap_and_budget(toy):
    a, b = _state(toy, "alice", budget=3), _state(toy, "bob", budget=3)
    ca, cb = _client(a), _client(b)
    assert _shown(ca) == "p2" and _shown(cb) == "p0"  # p2 is claimed by alice while she looks at it
    _post(ca, a, "/decide", {"pair_id": "p2", "key": "t"})
    assert _shown(ca) == "p4"
    _post(cb, b, "/decide", {"pair_id": "p0", "key": "t"})
    _post(ca, a, "/decide", {"pair_id": "p4", "key": "t"})
    assert _shown(ca) is None and "Queue finished" in ca.get("/").text  # budget 3: p3 is never offered
    # Overlap 2: each pair wants two people; a label or someone looking at it counts.
    seen = [_shown(_client(_state(toy, who, overlap=2))) for who in ("carol", "dave", "eve")]
    assert seen == ["p2", "p0", "p4"]  # carol joins alice on p2; dave joins bob on p0; eve alice on p4


def test_one_transaction_per_decision_is_on_disk(toy, tmp_path):
    db = ReviewDB(tmp_path / "r.sqlite")
    db.init_pairs(["x", "y"])
    db.decide("x", "a", "flip")
    # A second, independent connection sees it at once: committed, not buffered in the server.
    assert ReviewDB(tmp_path / "r.sqlite").live()[0]["decision"] == "flip"
    assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def _wait_for_url(proc) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("open: "):
            return line.split("open: ", 1)[1].strip()
        if not line and proc.poll() is not None:
            raise AssertionError(f"review exited: {proc.stderr.read()}")
    raise AssertionError("no URL printed")


def test_kill_minus_nine_loses_nothing_and_the_same_command_resumes(toy):
    import httpx

    cmd = [sys.executable, "-m", "prefdata.cli", "review", "toy@v1", "--port", "0", "--annotator", "kim"]
    keys = ["1", "t"]
    for round_ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
        try:
            url = _wait_for_url(proc)
            with httpx.Client(base_url=url.split("/?")[0], follow_redirects=True) as c:
                page = c.get("/?" + url.split("/?")[1]).text
                assert f"decided {round_} of 6" in page
                csrf = re.search(r'name="csrf" content="([^"]+)"', page).group(1)
                pid = re.search(r'data-id="([^"]+)"', page).group(1)
                r = c.post("/decide", json={"pair_id": pid, "key": keys[round_]}, headers={"X-CSRF-Token": csrf})
                assert r.status_code == 200
        finally:
            proc.send_signal(signal.SIGKILL)  # no shutdown hook runs
            proc.wait(10)
    live = ReviewDB(db_path(toy)).live()
    assert [(d["pair_id"], d["key"]) for d in live] == [("p2", "1"), ("p0", "t")]


def test_ctrl_c_stops_the_server_with_a_line_that_says_nothing_was_lost(toy):
    cmd = [sys.executable, "-m", "prefdata.cli", "review", "toy@v1", "--port", "0", "--annotator", "kim"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        _wait_for_url(proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "review server stopped; every decision so far is saved" in err
    assert "rerun to resume from the cache" not in err


# ----------------------------------------------------------------------------- agreement and commit


def test_cohen_and_fleiss_by_hand():
    cats = LABELS  # keep, flip, tie, drop
    a = ["keep", "keep", "flip", "flip", "tie"]
    b = ["keep", "flip", "flip", "flip", "tie"]
    # po = 4/5; marginals A (2, 2, 1), B (1, 3, 1): pe = (2 + 6 + 1) / 25 = 0.36; (0.8 - 0.36) / 0.64
    assert cohen_kappa(np.array([cats.index(x) for x in a]), np.array([cats.index(x) for x in b]), 4) == \
        pytest.approx(0.6875)
    rep = annotator_agreement([f"q{i}" for i in range(5)] * 2, ["A"] * 5 + ["B"] * 5, a + b, cats)
    assert rep["method"] == "Cohen's kappa" and rep["kappa"] == pytest.approx(0.6875) and rep["pairs"] == 5
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa_score(a, b) == pytest.approx(0.6875)
    # Three raters, three items: counts (3,0,0), (2,1,0), (0,2,1). P_i = 1, 1/3, 1/3 -> mean 5/9;
    # p_j = 5/9, 3/9, 1/9 -> Pe = 35/81; kappa = (45 - 35) / (81 - 35) = 10/46.
    assert fleiss_kappa(np.array([[3, 0, 0, 0], [2, 1, 0, 0], [0, 2, 1, 0]])) == pytest.approx(10 / 46)
    items = ["i1"] * 3 + ["i2"] * 3 + ["i3"] * 3 + ["i4"]  # i4 has one label: not shared, left out
    who = ["A", "B", "C"] * 3 + ["A"]
    labels = ["keep"] * 3 + ["keep", "keep", "flip"] + ["flip", "flip", "tie"] + ["drop"]
    rep3 = annotator_agreement(items, who, labels, cats)
    assert rep3["method"] == "Fleiss' kappa" and rep3["kappa"] == pytest.approx(10 / 46, abs=1e-4)
    assert rep3["pairs"] == 3 and rep3["raw_agreement"] == pytest.approx(5 / 9, abs=1e-4)


def test_commit_applies_flip_drop_tie_with_lineage_and_card(toy):
    db = ReviewDB(db_path(toy))
    db.init_pairs(priority(store.load_table(str(toy.path))))
    for pid, a, d in [("p0", "A", "flip"), ("p0", "B", "flip"), ("p1", "A", "drop"), ("p2", "A", "tie"),
                      ("p3", "A", "keep"), ("p3", "B", "keep"), ("p4", "A", "keep"), ("p4", "B", "flip"),
                      ("p5", "A", "skip"), ("p5", "B", "flip")]:
        db.decide(pid, a, d)
    db.decide("p5", "B", "keep")
    db.undo("B")  # p5: B's flip stands again
    from prefdata.cli import main

    main(["review", "commit", "toy@v1"])
    new = store.resolve("toy@latest")
    assert new.version == "v2"
    rows = {r["id"]: r for r in store.load_table("toy@v2").to_pylist()}
    old = {r["id"]: r for r in store.load_table("toy@v1").to_pylist()}
    assert "p1" not in rows and len(rows) == 5
    p0 = rows["p0"]
    assert p0["chosen"] == old["p0"]["rejected"] and p0["rejected"] == old["p0"]["chosen"] and p0["flipped"]
    assert p0["votes"] == [-1.0, 1.0] and p0["auto_label_prob"] == pytest.approx(0.45)
    assert p0["label_prob"] == pytest.approx(1 / (1 + 0.25 ** 2)) and p0["human_labels"] == 2
    assert rows["p2"]["label_prob"] == 0.5 and rows["p2"]["chosen"] == old["p2"]["chosen"]
    assert rows["p3"]["label_prob"] == pytest.approx(1 / (1 + 0.25 ** 2)) and not rows["p3"]["flipped"]
    assert rows["p4"]["label_prob"] == 0.5  # 1 keep, 1 flip: a tie
    assert rows["p5"]["flipped"] and rows["p5"]["label_prob"] == pytest.approx(0.8)  # skip is no label
    man = new.manifest
    dec = store.resolve("toy-review-decisions@latest")
    assert man["parents"] == ["toy@v1", dec.ref] and man["lineage"]["review"]["decisions"] == dec.ref
    log = store.load_table(dec.ref).to_pylist()
    assert len(log) == 11 and sum(r["undone"] for r in log) == 1
    s = man["lineage"]["review"]
    assert (s["labels_changed"], s["dropped"], s["ties"], s["kept"]) == (2, 1, 2, 1)
    # Two annotators on p0, p3, p4 (p5: A skipped): A keep/keep/flip... by hand: A = flip, keep, keep;
    # B = flip, keep, flip. po = 2/3; marginals A (2 keep, 1 flip), B (1, 2): pe = (2 + 2) / 9; kappa = 0.4
    aa = s["annotator_agreement"]
    assert aa["method"] == "Cohen's kappa" and aa["pairs"] == 3 and aa["kappa"] == pytest.approx(0.4)
    # The vote (label_prob >= 0.5 keeps) against humans: p0 flip (vote keep), p3 keep (keep), p5 flip (keep).
    assert s["vote_vs_humans"] == {"pairs": 3, "agreement": pytest.approx(1 / 3, abs=1e-4)}
    card = new.card_path.read_text()
    assert "## Human review" in card and "| labels changed (flipped) | 2 |" in card and "Cohen's kappa 0.400" in card
    commit_review("toy@v1")  # same content again: the same versions, nothing new
    assert store.resolve("toy@latest").version == "v2"


def test_commit_without_a_review_says_what_to_do(toy):
    from prefdata.errors import PrefdataError

    with pytest.raises(PrefdataError, match="prefdata review toy@v1"):
        commit_review("toy@v1")


# ----------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install -y chromium)")
def test_browser_keys_label_pairs_reload_keeps_them_then_commit(toy):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright python package not installed")
    import socket

    import uvicorn

    st = _state(toy, "browser")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(st), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{base}/?token={st.token}")
            assert page.url == f"{base}/"  # the token left the address bar
            for i, key in enumerate(["1", "2", "t", "1", "2"]):
                with page.expect_navigation():
                    page.keyboard.press(key)
                assert page.locator("#progress").inner_text() == f"decided {i + 1} of 6"
            page.reload()
            assert page.locator("#progress").inner_text() == "decided 5 of 6"
            assert page.locator("#recent li").count() == 5
            with page.expect_navigation():
                page.keyboard.press("u")
            assert page.locator("#progress").inner_text() == "decided 4 of 6"
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    live = st.db.live("browser")
    assert [d["key"] for d in live] == ["1", "2", "t", "1"]
    version, _, summary = commit_review("toy@v1")
    assert version.version == "v2" and summary["reviewed_pairs"] == 4 and summary["ties"] == 1
