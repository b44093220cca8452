"""The Ray executor on a local Ray (num_cpus=2): every call is a Ray Data stage over engine actors.

Same rows and version shape as the local executor, n>1 samples survive the trip, a worker that dies
mid-batch is restarted and its finished work read back from the cache, and a worker that keeps
dying ends in a PrefdataError rather than a hang.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'prefdata[ray]')")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
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
    remote = run_pipeline(REPO / "pipelines" / "quickstart.yaml", sets, executor="ray")["rlcd"]
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
    eng = RayEngine(EngineConfig(model=tiny_model), num_workers=2)
    outs = eng.generate(reqs, p)
    texts = [[c.text for c in comps] for comps in outs]
    assert [len(t) for t in texts] == [3] * 4
    assert all(len(set(t)) == 3 for t in texts), texts
    assert texts == [[c.text for c in comps] for comps in _local(tiny_model, reqs, p)]
    assert eng.stats["requests"] == 12 and eng.stats["generated_tokens"] > 0 and eng.stats["worker_restarts"] == 0
    # Scoring goes through its own stage and comes back in request order.
    from prefdata.engines import get_engine

    firsts = [t[0] for t in texts]
    local_scores = get_engine(EngineConfig(model=tiny_model, cache=False, progress=False)).score(reqs, firsts)
    assert eng.score(reqs, firsts) == pytest.approx(local_scores, rel=1e-4, abs=1e-4)
    assert len(set(local_scores)) > 1  # distinct scores, so a misordering would show


def test_worker_killed_mid_batch_is_restarted_and_its_finished_work_comes_from_the_cache(
        local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    reqs, p = _requests(16), SamplingParams(max_tokens=6, seed=1)
    # Ray batches of 4 requests, engine batches of 2: the dying worker has cached 2 samples.
    eng = RayEngine(EngineConfig(model=tiny_model, max_batch_size=2), num_workers=2, batch_size=4,
                    engine_factory=functools.partial(_crashing_engine, marker=str(tmp_path / "crashed")))
    out = eng.generate(reqs, p)
    assert (tmp_path / "crashed").exists()  # a worker really died
    assert [o[0].text for o in out] == [o[0].text for o in _local(tiny_model, reqs, p)]
    assert eng.stats["worker_restarts"] == 1
    # The retried batch read its first 2 samples back from the cache: 14 generated, not 16.
    assert eng.stats["requests"] == 14


def test_worker_that_keeps_dying_ends_in_a_clear_error(local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import SamplingParams
    from prefdata.errors import PrefdataError
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    eng = RayEngine(EngineConfig(model=tiny_model, max_batch_size=2), num_workers=1, batch_size=4,
                    max_restarts=1, engine_factory=functools.partial(_crashing_engine, marker=None))
    with pytest.raises(PrefdataError, match=r"generate stage on 4 requests failed .*died.*rerun the same command"):
        eng.generate(_requests(4), SamplingParams(max_tokens=6, seed=1))
