"""The Ray executor on a local Ray (num_cpus=2): every call runs on the engine's pool of actors.

Same rows and version shape as the local executor, n>1 samples survive the trip, the pool is reused by
every call of the run, a worker that dies mid-batch is restarted and its finished work read back from
its cache shard, a worker that keeps dying ends in a PrefdataError rather than a hang, and the
`executor:` block is checked, overridden by the environment and by --set as documented.
The two-node cluster test is tests/test_ray_cluster.py.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'prefdata[ray]')")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    # address="local": with None, Ray joins any cluster /tmp/ray last recorded (another test's, say).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    # The crashing engines below live in this module, which Ray workers cannot import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


class _CrashingBackend:
    """Wraps a real backend; after its first inner batch is cached, the worker process exits hard.

    With a marker path, only the first worker to create the marker dies (once per test); with None,
    every worker dies on every batch.
    """

    def __init__(self, inner, marker):
        self.inner, self.marker = inner, marker
        self.name, self.model_id, self.stats = inner.name, inner.model_id, inner.stats

    def generate_samples(self, items, params, on_batch=None):
        def save(positions, comps):
            on_batch(positions, comps)  # the cache commits this batch before the crash
            if self.marker is not None:
                try:
                    os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return
            os._exit(1)

        return self.inner.generate_samples(items, params, on_batch=save)

    def score(self, requests, completions):
        return self.inner.score(requests, completions)


def _crashing_engine(cfg, marker):
    from prefdata.engines import get_engine

    eng = get_engine(cfg)
    eng.backend = _CrashingBackend(eng.backend, marker)
    return eng


def _requests(n):
    from prefdata.engines.base import ChatRequest

    return [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], request_id=str(i)) for i in range(n)]


def _local(tiny_model, reqs, params):
    from prefdata.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=tiny_model, cache=False, progress=False)).generate(reqs, params)


def test_ray_executor_commits_the_same_version_as_local(local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.pipeline import run_pipeline

    sets = [f"engine.model={tiny_model}", "steps.rlcd.limit=6", "steps.rlcd.config.max_tokens=8",
            "steps.rlcd.config.max_retries=1"]
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "local"))
    local = run_pipeline(REPO / "pipelines" / "quickstart.yaml", sets)["rlcd"]
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "ray"))
    # Through the YAML's executor block (as --set), with a batch size that splits the calls differently.
    remote = run_pipeline(REPO / "pipelines" / "quickstart.yaml",
                          sets + ["executor.type=ray", "executor.batch_size=2"])["rlcd"]
    assert remote.path.is_relative_to(tmp_path / "ray")
    # Same rows, same schema.
    assert remote.sha == local.sha and remote.manifest["splits"] == local.manifest["splits"]
    assert remote.manifest["columns"] == local.manifest["columns"] and remote.manifest["kind"] == local.manifest["kind"]
    # Same lineage shape, and the workers' usage counters reached the lineage and the card.
    lr, ll = remote.manifest["lineage"], local.manifest["lineage"]
    assert lr.keys() == ll.keys()
    for key in ("engine", "model", "engine_config", "fingerprint", "step", "seeds", "report", "parents"):
        assert lr[key] == ll[key], key
    assert ll["engine_usage"]["requests"] > 0 and lr["engine_usage"] == ll["engine_usage"]
    assert "Engine usage" in remote.card_path.read_text(encoding="utf-8")


def test_n_samples_and_scores_come_back_through_ray(local_ray, tiny_model, tmp_path, monkeypatch):
    """Guards the ray.data.llm pitfall (only outputs[0] kept): n=3 gives 3 distinct samples each."""
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    reqs, p = _requests(4), SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=3)
    with RayEngine(EngineConfig(model=tiny_model), num_workers=2) as eng:
        outs = eng.generate(reqs, p)
        texts = [[c.text for c in comps] for comps in outs]
        assert [len(t) for t in texts] == [3] * 4
        assert all(len(set(t)) == 3 for t in texts), texts
        assert texts == [[c.text for c in comps] for comps in _local(tiny_model, reqs, p)]
        assert eng.stats["requests"] == 12 and eng.stats["generated_tokens"] > 0 and eng.stats["worker_restarts"] == 0
        pids = {a.pid for a in eng._pool}
        # Scoring goes through the same actors (no second model load) and comes back in request order.
        from prefdata.engines import get_engine

        firsts = [t[0] for t in texts]
        local_scores = get_engine(EngineConfig(model=tiny_model, cache=False, progress=False)).score(reqs, firsts)
        assert eng.score(reqs, firsts) == pytest.approx(local_scores, rel=1e-4, abs=1e-4)
        assert len(set(local_scores)) > 1  # distinct scores, so a misordering would show
        assert len(pids) == 2 and {a.pid for a in eng._pool} == pids and eng.pools_started == 1
        # A repeated call is served from the driver's cache: no request reaches a worker.
        assert [[c.text for c in o] for o in eng.generate(reqs, p)] == texts and eng.stats["requests"] == 12
        shards = eng._shard_dir
    # Closing merged the workers' shards into the main cache and removed them.
    assert not list(shards.glob("*.sqlite")) and not list(shards.glob("*.run"))


def test_worker_killed_mid_batch_is_restarted_and_its_finished_work_comes_from_the_cache(
        local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    reqs, p = _requests(16), SamplingParams(max_tokens=6, seed=1)
    # Ray batches of 4 requests, engine batches of 2: the dying worker has cached 2 samples.
    with RayEngine(EngineConfig(model=tiny_model, max_batch_size=2), num_workers=2, batch_size=4,
                   engine_factory=functools.partial(_crashing_engine, marker=str(tmp_path / "crashed"))) as eng:
        out = eng.generate(reqs, p)
        assert (tmp_path / "crashed").exists()  # a worker really died
        assert [o[0].text for o in out] == [o[0].text for o in _local(tiny_model, reqs, p)]
        assert eng.stats["worker_restarts"] == 1
        # The retried batch read its first 2 samples back from the dead worker's shard: 14 generated, not 16.
        assert eng.stats["requests"] == 14


def test_worker_that_keeps_dying_ends_in_a_clear_error(local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.errors import PrefdataError
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    with RayEngine(EngineConfig(model=tiny_model, max_batch_size=2), num_workers=1, batch_size=4,
                   max_restarts=1, engine_factory=functools.partial(_crashing_engine, marker=None)) as eng:
        with pytest.raises(PrefdataError, match=r"generate stage on 4 requests failed .*died.*rerun the same command"):
            eng.generate(_requests(4), SamplingParams(max_tokens=6, seed=1))


def _pipeline(tmp_path, executor=None):
    import yaml

    doc = {"engine": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"},
           "steps": [{"name": "r", "uses": "rlcd", "input": "builtin:quickstart_prompts", "output": "o"}]}
    if executor is not None:
        doc["executor"] = executor
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_executor_block_is_checked_and_overridden_in_the_documented_order(tmp_path, monkeypatch):
    from prefdata.errors import ConfigError
    from prefdata.executors import ENV
    from prefdata.pipeline import load_spec

    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    assert load_spec(_pipeline(tmp_path)).executor.type == "local"
    spec = load_spec(_pipeline(tmp_path, {"type": "ray", "workers": 3, "gpus_per_worker": 1,
                                          "resources_per_worker": {"big": 1}}))
    assert (spec.executor.type, spec.executor.workers, spec.executor.gpus_per_worker) == ("ray", 3, 1.0)
    assert spec.executor.resources_per_worker == {"big": 1.0}
    # A typo or an out-of-range value fails at load, naming the file and the key.
    with pytest.raises(ConfigError, match=r"p\.yaml: unknown key 'executor\.workrs'"):
        load_spec(_pipeline(tmp_path, {"type": "ray", "workrs": 4}))
    with pytest.raises(ConfigError, match=r"p\.yaml: 'executor\.workers'"):
        load_spec(_pipeline(tmp_path, {"workers": 0}))
    # The environment beats the file, --set beats the environment.
    monkeypatch.setenv("PREFDATA_RAY_WORKERS", "5")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    spec = load_spec(_pipeline(tmp_path, {"type": "ray", "workers": 3, "address": "auto"}))
    assert (spec.executor.workers, spec.executor.address) == (5, "ray://head:10001")
    assert load_spec(_pipeline(tmp_path, {"workers": 3}), ["executor.workers=7"]).executor.workers == 7
    monkeypatch.setenv("PREFDATA_RAY_WORKERS", "many")
    with pytest.raises(ConfigError, match=r"environment variable PREFDATA_RAY_WORKERS='many'"):
        load_spec(_pipeline(tmp_path))



def test_pool_lives_for_the_run_and_is_shut_down_when_the_run_fails(local_ray, tmp_path, monkeypatch, ray_engines):
    import yaml

    from prefdata.engines.faultserver import FaultServer
    from prefdata.errors import PrefdataError
    from prefdata.pipeline import run_pipeline

    engines = ray_engines
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    with FaultServer() as s:
        step = {"uses": "rlcd", "input": "builtin:quickstart_prompts", "limit": 4, "config": {"max_retries": 0}}
        doc = {"engine": {"backend": "openai", "model": "test-model", "base_url": s.url, "progress": False},
               "executor": {"type": "ray", "workers": 2, "batch_size": 2},
               "steps": [{**step, "name": "a", "output": "pool-a"}, {**step, "name": "b", "output": "pool-b"},
                         {**step, "name": "c", "output": "pool-c", "input": "step:nope"}]}
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump(doc))
        with pytest.raises(PrefdataError, match="no earlier step named 'nope'"):
            run_pipeline(p)
    # Steps a and b used one pool (built once), and the failed run still shut it down: its CPUs are back.
    assert len(engines) == 1 and engines[0].pools_started == 1 and not engines[0]._pool
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_pools_that_do_not_fit_together_evict_the_idle_one(local_ray, tmp_path, monkeypatch):
    from prefdata.engines import EngineConfig
    from prefdata.engines.faultserver import FaultServer
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    with FaultServer() as s:
        cfg = {"backend": "openai", "model": "test-model", "base_url": s.url}
        # Two engine configs, each wanting both of this Ray's 2 CPUs.
        with RayEngine(EngineConfig(**cfg), num_workers=2) as gen, \
                RayEngine(EngineConfig(**cfg, max_retries=1), num_workers=2) as judge:
            assert len(gen.generate(_requests(4), _params())) == 4 and len(gen._pool) == 2
            # Other requests (the same ones would all be cache hits and need one worker only).
            assert len(judge.generate(_requests(4), _params(seed=3))) == 4  # waits forever without eviction
            assert not gen._pool and len(judge._pool) == 2
            # Used again, the evicted engine builds its pool anew (and evicts the other in turn).
            assert len(gen.generate(_requests(6), _params(seed=4))) == 6 and gen.pools_started == 2
            assert not judge._pool


def _params(seed: int = 2):
    from prefdata.engines.base import SamplingParams

    return SamplingParams(max_tokens=8, seed=seed)


def test_a_new_pool_merges_the_shards_of_dead_drivers_only(local_ray, tmp_path, monkeypatch):
    import json
    import socket
    import subprocess

    from prefdata.engines import EngineConfig
    from prefdata.engines.base import Completion
    from prefdata.engines.cache import RequestCache
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    shards = tmp_path / "h" / "cache" / "requests.shards"
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    owners = {"dead": {"host": socket.gethostname(), "pid": int(dead_pid)},  # a driver killed on this host
              "live": {"host": socket.gethostname(), "pid": os.getpid()},  # a driver still running here
              "away": {"host": "elsewhere", "pid": 1}}  # another host, marker fresh: presumed alive
    for pool, owner in owners.items():
        shards.mkdir(parents=True, exist_ok=True)
        (shards / f"{pool}.run").write_text(json.dumps(owner))
        c = RequestCache(shards / f"{pool}.0.x.sqlite", shard=True)
        c.put_many({f"{pool}-key": Completion(text=pool, finish_reason="stop")})
        c.close()
    orphan = RequestCache(shards / "gone.0.y.sqlite", shard=True)  # a shard whose marker is gone
    orphan.put_many({"gone-key": Completion(text="gone", finish_reason="stop")})
    orphan.close()
    eng = RayEngine(EngineConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    eng._recover_leftovers()
    main = RequestCache(tmp_path / "h" / "cache" / "requests.sqlite")
    assert set(main.get_many(["dead-key", "live-key", "away-key", "gone-key"])) == {"dead-key", "gone-key"}
    assert sorted(p.name for p in shards.iterdir()) == ["away.0.x.sqlite", "away.run", "live.0.x.sqlite", "live.run"]
