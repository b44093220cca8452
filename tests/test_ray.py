"""The Ray executor on a local Ray (num_cpus=2): same rows as the local executor, survives a dead worker."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'prefdata[ray]')")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_executor_commits_the_same_version_as_local(local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.pipeline import run_pipeline

    sets = [f"engine.model={tiny_model}", "steps.rlcd.limit=6", "steps.rlcd.config.max_tokens=8",
            "steps.rlcd.config.max_retries=1"]
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "local"))
    local = run_pipeline(REPO / "pipelines" / "quickstart.yaml", sets)["rlcd"]
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "ray"))
    remote = run_pipeline(REPO / "pipelines" / "quickstart.yaml", sets, executor="ray")["rlcd"]
    assert remote.sha == local.sha and remote.manifest["splits"] == local.manifest["splits"]


def test_dead_worker_is_replaced_and_rows_unchanged(local_ray, tiny_model, tmp_path, monkeypatch):
    from prefdata.engines import EngineConfig
    from prefdata.engines.base import ChatRequest, SamplingParams
    from prefdata.executors.ray import RayEngine

    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "h"))
    eng = RayEngine(EngineConfig(model=tiny_model), num_workers=2)
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(6)]
    p = SamplingParams(max_tokens=6, seed=1)
    before = [o[0].text for o in eng.generate(reqs, p)]
    ray.kill(eng.workers[0])
    after = [o[0].text for o in eng.generate(reqs, p)]
    assert after == before and eng.stats["worker_restarts"] == 1
