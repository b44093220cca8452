"""Where a pipeline's model calls run: `local` (this process) or `ray` (engine actors on a Ray cluster).

The pipeline YAML's `executor:` block maps 1:1 onto `ExecutorConfig`:

    executor: {type: ray, address: auto, workers: 4, gpus_per_worker: 1, batch_size: 32}

Precedence, lowest first: the defaults below, the YAML file, the environment variables in `ENV`
(`RAY_ADDRESS`, `PREFDATA_RAY_*`), `--set executor.<field>=…`, and `prefdata run --executor` (the type
only). Environment variables beat the file so that one cluster's settings (a Ray job's RAY_ADDRESS,
a node's GPU count) apply to every pipeline run there without editing the YAML; `--set` beats them
because it is the most specific thing typed for this one run.

None of these settings reaches a step's fingerprint or its rows: workers, batching and placement
change where and when a request runs, never its answer (every sample is seeded from its content and
cached by it).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefdata.errors import ConfigError

# Environment variable -> ExecutorConfig field.
ENV = {"RAY_ADDRESS": "address", "PREFDATA_RAY_WORKERS": "workers", "PREFDATA_RAY_BATCH_SIZE": "batch_size",
       "PREFDATA_RAY_CPUS_PER_WORKER": "cpus_per_worker", "PREFDATA_RAY_GPUS_PER_WORKER": "gpus_per_worker",
       "PREFDATA_RAY_MAX_RESTARTS": "max_restarts", "PREFDATA_RAY_START_TIMEOUT": "start_timeout_s"}


class ExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["local", "ray"] = Field("local", description="local: engines in this process. ray: every "
                                          "generate/score call runs on a pool of engine actors (Ray).")
    address: str | None = Field(None, description="Ray cluster to join: `auto` (on a node of a running cluster), "
                                "`ray://head:10001` (Ray Client) or host:port. Unset: start a local Ray with this "
                                "machine's CPUs. Env RAY_ADDRESS.")
    workers: int = Field(2, ge=1, le=10_000, description="Engine actors per engine config; each loads the model "
                         "once and serves every step and stage of the run. Env PREFDATA_RAY_WORKERS.")
    cpus_per_worker: float = Field(1.0, ge=0, le=1024, description="Ray CPUs reserved per engine actor. "
                                   "Env PREFDATA_RAY_CPUS_PER_WORKER.")
    gpus_per_worker: float = Field(0.0, ge=0, le=64, description="Ray GPUs per engine actor: 1 for vLLM on a GPU, "
                                   "0.5 packs two small models per GPU. Env PREFDATA_RAY_GPUS_PER_WORKER.")
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per "
                                                   "engine actor, e.g. {accelerator_type:H100: 0.001} or a resource "
                                                   "only some nodes advertise, to pin the engines there.")
    batch_size: int = Field(32, ge=1, le=1_000_000, description="Requests per actor call. A worker that dies loses "
                            "at most its call's unfinished requests (less: the engine commits each inner batch to "
                            "its cache shard). Env PREFDATA_RAY_BATCH_SIZE.")
    max_restarts: int = Field(3, ge=0, le=1000, description="Ray restarts per actor, and retries per batch, "
                              "before the call fails (a rerun resumes from the cache). Env PREFDATA_RAY_MAX_RESTARTS.")
    start_timeout_s: float = Field(1800.0, gt=0, le=7 * 86400, description="How long an actor may take to start "
                                   "or restart (model load included) before the call fails, so a cluster without "
                                   "room for the workers errors instead of hanging. Env PREFDATA_RAY_START_TIMEOUT.")

    @classmethod
    def from_env(cls, base: dict | None = None) -> ExecutorConfig:
        """`base` (a YAML block) with the environment variables in `ENV` applied over it."""
        return cls.model_validate(with_env(base))


def with_env(block) -> dict:
    """The `executor:` block as a dict with every set environment variable in `ENV` applied over it.

    Each variable is checked on its own, so a bad value fails naming the variable, not the YAML."""
    out = dict(block) if isinstance(block, dict) else ({} if block is None else block)
    if not isinstance(out, dict):
        return out  # not a mapping: PipelineSpec's validation reports it, naming the file
    for var, name in ENV.items():
        raw = os.environ.get(var)
        if raw in (None, ""):
            continue
        try:
            out[name] = getattr(ExecutorConfig.model_validate({name: raw.strip()}), name)
        except ValidationError as e:
            raise ConfigError(f"environment variable {var}={raw!r}: {e.errors()[0]['msg']}") from None
    return out


__all__ = ["ENV", "ExecutorConfig", "with_env"]
