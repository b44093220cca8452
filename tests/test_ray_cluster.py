"""The Ray executor across two nodes, and the cache shards that make that safe.

Two-node test: a `ray.cluster_utils.Cluster` on this machine (a head with 1 CPU and no engine
resource, and a worker node that alone advertises the `engine` resource, so every engine actor lands
on it), a two-step pipeline whose steps share one engine pool, on the openai backend against the
loopback fault server (deterministic answers, no model to load). The worker node is killed mid-run
and a fresh one added; the run carries on, and both committed versions equal a local run's.

Shard tests (no Ray): several writer processes at once, a shard left half written by a killed
writer, a truncated shard, and a merge killed part way, each merged without loss or duplicates.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from prefdata.engines.base import Completion
from prefdata.engines.cache import RequestCache, merge_shards

REPO = Path(__file__).resolve().parents[1]


def _rows(n: int, start: int = 0, tag: str = "") -> dict[str, Completion]:
    return {f"k{i:06d}": Completion(text=f"text {i}{tag}", finish_reason="stop") for i in range(start, start + n)}


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO)


# ----------------------------------------------------------------------------- shards


def test_concurrent_writer_processes_merge_to_the_union_without_duplicates(tmp_path):
    shards = tmp_path / "requests.shards"
    # Four writers at once, each its own shard, committing in batches of 25; neighbours overlap by
    # 100 keys, which the merge must keep once.
    procs = [_child(f"""
        from prefdata.engines.cache import RequestCache
        from prefdata.engines.base import Completion
        c = RequestCache({str(shards / f"pool.{w}.x.sqlite")!r}, shard=True)
        for b in range({w * 200}, {w * 200 + 300}, 25):
            c.put_many({{f"k{{i:06d}}": Completion(text=f"text {{i}}", finish_reason="stop") for i in range(b, b + 25)}})
            c.put_scores({{f"s{{b}}": float(b)}})
        """) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    main = RequestCache(tmp_path / "requests.sqlite")
    main.put_many({"k000000": Completion(text="kept", finish_reason="stop")})  # an existing key is not replaced
    added = merge_shards(main, shards.glob("*.sqlite"))
    assert len(main) == 900 and added == 899 + 36  # 900 keys (one already there) and 36 distinct scores
    assert main.get_many(["k000000"])["k000000"].text == "kept"
    assert main.get_many(["k000899"])["k000899"].text == "text 899"
    assert main.get_scores(["s625"]) == {"s625": 625.0}
    assert not list(shards.iterdir())  # merged shards are gone
    assert merge_shards(main, shards.glob("*.sqlite")) == 0 and len(main) == 900


def test_half_written_shard_is_rolled_back_and_a_torn_one_set_aside(tmp_path):
    shards = tmp_path / "s"
    half = shards / "pool.0.a.sqlite"
    # The writer commits 50 rows, then dies inside a transaction big enough to spill to the file:
    # the shard is left with changed pages and a hot journal, as when a node dies mid-commit.
    p = _child(f"""
        import os
        from prefdata.engines.cache import RequestCache, _canon
        c = RequestCache({str(half)!r}, shard=True)
        from prefdata.engines.base import Completion
        c.put_many({{f"k{{i:06d}}": Completion(text="ok", finish_reason="stop") for i in range(50)}})
        c._db.execute("PRAGMA cache_size=1")
        c._db.executemany("INSERT INTO gen VALUES (?, ?)", [(f"x{{i}}", "y" * 500) for i in range(3000)])
        os._exit(1)
        """)
    assert p.wait(timeout=60) == 1
    assert Path(f"{half}-journal").is_file()  # really half written
    good = RequestCache(shards / "pool.1.b.sqlite", shard=True)
    good.put_many(_rows(10, start=100))
    good.close()
    torn = shards / "pool.2.c.sqlite"
    shutil.copy(shards / "pool.1.b.sqlite", torn)
    big = RequestCache(torn, shard=True)
    big.put_many(_rows(400, start=1000, tag="x" * 200))
    big.close()
    with open(torn, "r+b") as f:  # a node that died while the filesystem wrote it back
        f.truncate(os.path.getsize(torn) // 2)
    main = RequestCache(tmp_path / "requests.sqlite")
    warnings: list[str] = []
    added = merge_shards(main, shards.glob("*.sqlite"), warn=warnings.append)
    assert added == 60 and len(main) == 60  # the 50 committed rows and the good shard; nothing uncommitted
    assert not main.get_many(["x1"]) and main.get_many(["k000049", "k000100"]).keys() == {"k000049", "k000100"}
    assert len(warnings) == 1 and "pool.2.c.sqlite" in warnings[0] and "set aside" in warnings[0]
    assert sorted(p.name for p in shards.iterdir()) == ["pool.2.c.sqlite.corrupt"]


def test_merge_killed_part_way_loses_and_duplicates_nothing(tmp_path):
    shards = tmp_path / "s"
    for w in range(3):
        c = RequestCache(shards / f"pool.{w}.z.sqlite", shard=True)
        for b in range(w * 4000, w * 4000 + 6000, 500):
            c.put_many(_rows(500, start=b))
        c.close()
    main_path = tmp_path / "requests.sqlite"
    RequestCache(main_path).close()
    # A merging process dies at each dangerous point: inside the insert before its commit, after the
    # commit but before the shard is deleted, and after one shard is done while on the next.
    crash = {"before commit": "c._db = Dying(c._db)",
             "before delete": "os.unlink = lambda *a: os._exit(3)",
             "on the second shard": "os.unlink, real = (lambda p: (real(p), Dying.arm()) if p.endswith('.sqlite') "
                                    "else real(p)), os.unlink"}
    for where, hook in crash.items():
        p = _child(f"""
            import os
            from pathlib import Path
            from prefdata.engines.cache import RequestCache, merge_shards

            class Dying:  # the connection, except that commit kills the process
                armed = True
                def __init__(self, db): self.db = db
                def __getattr__(self, name): return getattr(self.db, name)
                def commit(self):
                    if Dying.armed: os._exit(3)
                    self.db.commit()
                @classmethod
                def arm(cls): cls.armed = True

            c = RequestCache({str(main_path)!r})
            Dying.armed = {where == "before commit"}
            {hook}
            if {where == "on the second shard"}:
                c._db = Dying(c._db)
                Dying.armed = False
            merge_shards(c, sorted(Path({str(shards)!r}).glob("*.sqlite")))
            """)
        assert p.wait(timeout=60) == 3, where
    db = sqlite3.connect(main_path)
    # The first shard (keys 0..5999) went in once; the rest is still in its shards.
    assert db.execute("SELECT COUNT(*) FROM gen").fetchone()[0] == 6000
    assert len(list(shards.glob("*.sqlite"))) == 2
    main = RequestCache(main_path)
    merge_shards(main, shards.glob("*.sqlite"))
    assert len(main) == 14000  # keys 0..13999, each once (a PRIMARY KEY: a duplicate could not even be stored)
    db = sqlite3.connect(main_path)
    assert db.execute("SELECT COUNT(DISTINCT key), COUNT(*) FROM gen").fetchone() == (14000, 14000)
    assert not list(shards.glob("*.sqlite"))


# ----------------------------------------------------------------------------- two nodes


@pytest.fixture
def two_nodes(monkeypatch):
    if ray.is_initialized():  # a connection left by an earlier test would not see this cluster
        ray.shutdown()
    # A private Ray temp dir (short: Ray's socket paths must stay under 107 bytes): the cluster's
    # address file then lives there, so other Ray users on this machine never join this cluster.
    tmp = tempfile.mkdtemp(prefix="pdr", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Fast node-death detection: the default health check takes tens of seconds to give up on a node.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 3}})
    worker = cluster.add_node(num_cpus=2, resources={"engine": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _pipeline(tmp_path: Path, url: str) -> Path:
    engine = {"backend": "openai", "model": "test-model", "base_url": url, "max_retries": 0, "progress": False}
    doc = {"name": "two-nodes", "seed": 0, "engine": engine,
           "executor": {"type": "ray", "workers": 2, "cpus_per_worker": 0.5, "resources_per_worker": {"engine": 1},
                        "batch_size": 2, "max_restarts": 4, "start_timeout_s": 120},
           "steps": [{"name": "gen", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": "tn-gen",
                      "limit": 12, "config": {"max_retries": 0}},
                     # Same engine config: the same actors serve this step's generate and judge calls.
                     {"name": "judge", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": "tn-judge",
                      "limit": 4, "config": {"max_retries": 0, "rescore": True}}]}
    p = tmp_path / "two_nodes.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_worker_node_killed_mid_run_the_run_carries_on_and_commits_the_local_version(
        two_nodes, tmp_path, monkeypatch, ray_engines):
    from prefdata.engines.faultserver import FaultServer
    from prefdata.pipeline import run_pipeline

    cluster, worker = two_nodes
    engines = ray_engines
    with FaultServer(latency=0.4) as server:
        path = _pipeline(tmp_path, server.url)
        monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "local"))
        local = run_pipeline(path, executor="local")
        served_locally = server.counts.get("ok", 0)
        server.counts.clear()
        monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "ray"))
        out: dict = {}

        def drive():
            try:
                out["versions"] = run_pipeline(path)  # executor.type: ray, from the YAML
            except BaseException as e:  # noqa: BLE001  (re-raised by the test thread below)
                out["error"] = e

        driver = threading.Thread(target=drive)
        driver.start()
        deadline = time.monotonic() + 60
        while server.counts.get("ok", 0) < 6 and driver.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.is_alive(), out.get("error")
        killed_at = server.counts.get("ok", 0)
        cluster.remove_node(worker)  # its raylet and both engine actors die mid-batch
        cluster.add_node(num_cpus=2, resources={"engine": 2})  # where Ray restarts them
        driver.join(timeout=150)
        assert not driver.is_alive(), "the run did not finish after the worker node was replaced"
    if "error" in out:
        raise out["error"]
    remote = out["versions"]
    assert 6 <= killed_at < served_locally  # the kill landed mid-run
    for step in ("gen", "judge"):
        r, l = remote[step], local[step]
        assert r.path.is_relative_to(tmp_path / "ray")
        assert r.sha == l.sha and r.manifest["splits"] == l.manifest["splits"], step
        assert r.manifest["lineage"]["fingerprint"] == l.manifest["lineage"]["fingerprint"]
    from prefdata import store

    rows = store.load_table(remote["gen"].ref).to_pylist()
    assert len(rows) == len(store.load_table(local["gen"].ref).to_pylist())
    assert len({r["id"] for r in rows}) == len(rows)  # no duplicates
    # One engine config, one pool for the whole run (both steps, generate and judge calls), and the
    # lost workers were seen to die and were restarted, not rebuilt as a new pool.
    assert len(engines) == 1 and engines[0].pools_started == 1
    usage = remote["gen"].manifest["lineage"]["engine_usage"]
    assert usage.get("worker_restarts", 0) >= 1
    # Requests the lost node finished in its shards were not asked again: at most the two batches in
    # flight (2 requests each) were redone.
    assert server.counts.get("ok", 0) <= served_locally + 4
    shards = tmp_path / "ray" / "cache" / "requests.shards"
    assert not list(shards.glob("*.sqlite")) and not list(shards.glob("*.run"))  # merged and removed at the end
