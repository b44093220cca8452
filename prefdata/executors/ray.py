"""Run a pipeline's model calls as Ray Data stages: one engine per worker, same rows as the local executor.

    prefdata run pipelines/quickstart.yaml --executor ray

The step code is unchanged: `StepContext.engine()` hands it a `RayEngine`, and every generate/score
call becomes one Ray Data stage,

    ray.data.from_items(rows) -> map_batches(_EngineWorker, actor pool of N workers) -> rows by index

where `_EngineWorker` is a callable class holding one engine (model loaded once per worker actor and
stage; the pool lives as long as the call). Requests travel as Arrow-friendly columns (messages as
JSON, assistant prefix, template version, seed offset, request id) and come back as JSON completions
or float scores, put back in request order by an index column. Each batch also returns the engine's
usage delta (requests, generated/prompt/completion tokens, failures, retries), so `RayEngine.stats`
and the step's lineage "engine_usage" count the work done on the workers; `worker_restarts` counts
the worker actors seen to come back after dying.

We deliberately do not use `ray.data.llm`: in Ray 2.60 `build_processor` keeps only `outputs[0]`, so
a request with n>1 silently yields one sample, and the `ray[llm]` extra pins vllm==0.29. Plain
`map_batches` over our own engine class works with every backend (transformers, vllm, openai) and
keeps their per-sample seeds and request cache.

Every (request, sample) is seeded from its own content and goes through the request cache, so the
rows do not depend on batching or on which worker ran them. A worker that dies mid-run (OOM, a
killed process, a lost node) is restarted by Ray and its batch retried (`max_restarts` /
`max_task_retries`, default 3 each); batches are small and the engine commits each inner batch to the
cache, so the retry reads what was finished back from the cache instead of regenerating it. When the
retries are exhausted the call raises a `PrefdataError` naming the stage; rerunning the same command
resumes from the cache.

Configuration (environment):

- `RAY_ADDRESS`: an existing cluster, `ray://head:10001` (Ray Client) or `auto` on a cluster node;
  unset starts a local Ray with this machine's CPUs. The workers need prefdata and the backend's
  packages installed (and, for the openai backend, the API key variable in their environment).
- `PREFDATA_RAY_WORKERS` (default 2): engine actors per stage.
- `PREFDATA_RAY_BATCH_SIZE` (default 32): requests per Ray batch; a dying worker loses at most this
  (less when its backend commits smaller inner batches to the cache).
- `PREFDATA_RAY_CPUS_PER_WORKER` (default 1), `PREFDATA_RAY_GPUS_PER_WORKER` (default 0; set 1 for
  vLLM on GPUs).
- `PREFDATA_RAY_MAX_RESTARTS` (default 3): restarts per worker and retries per batch.
- `PREFDATA_RAY_START_TIMEOUT` (default 1800 s): how long a stage waits for its workers to start
  (model load included) before failing, so a cluster without room for them errors instead of hanging.
- `$PREFDATA_HOME`: the workers open the request cache at the driver's
  `$PREFDATA_HOME/cache/requests.sqlite` (or `engine.cache_path`), passed to them as a path because a
  local Ray keeps the environment it started with. On a multi-node cluster that path must exist on
  every node, i.e. shared storage mounted at the same place; the cache is SQLite in WAL mode, which
  SQLite does not support across machines on a network filesystem, so only one node is tested.

Cost: the actor pool lives for one stage, so every generate/score call starts its workers and loads
the model once per worker (seconds for small models, more for large ones); calls with fewer requests
than workers start fewer workers.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict

from prefdata.engines.base import ChatRequest, Completion, SamplingParams
from prefdata.errors import PrefdataError

USAGE_COUNTERS = ("requests", "generated_tokens", "failed", "retries", "prompt_tokens", "completion_tokens")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise PrefdataError(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise PrefdataError(f"{name}={raw!r} is not a number") from None


def _request_rows(requests: list[ChatRequest]) -> list[dict]:
    return [{"idx": i, "messages": json.dumps(r.messages, ensure_ascii=False), "assistant_prefix": r.assistant_prefix,
             "template_version": r.template_version, "seed_offset": int(r.seed_offset), "request_id": r.request_id}
            for i, r in enumerate(requests)]


def _int_counters(stats: dict | None) -> dict[str, int]:
    return {k: v for k, v in (stats or {}).items() if isinstance(v, int) and not isinstance(v, bool)}


class _EngineWorker:
    """The Ray Data callable class: one engine per actor, built once, fed batches of requests."""

    def __init__(self, cfg: dict, factory=None):
        import ray

        from prefdata.engines import EngineConfig, get_engine

        self.engine = (factory or get_engine)(EngineConfig(**{**cfg, "progress": False}))
        rt = ray.get_runtime_context()
        self.actor_id = rt.get_actor_id() or ""
        self.pid = os.getpid()
        self.reconstructed = bool(rt.was_current_actor_reconstructed) if self.actor_id else False

    def __call__(self, batch, op: str, params: SamplingParams | None = None):
        import pandas as pd

        reqs = [ChatRequest(messages=json.loads(m), assistant_prefix=str(p), template_version=str(t),
                            seed_offset=int(s), request_id=str(i))
                for m, p, t, s, i in zip(batch["messages"], batch["assistant_prefix"], batch["template_version"],
                                         batch["seed_offset"], batch["request_id"])]
        before = _int_counters(self.engine.stats)
        if op == "generate":
            outs = self.engine.generate(reqs, params)
            result = [json.dumps([asdict(c) for c in comps], ensure_ascii=False) for comps in outs]
        else:
            result = [float(v) for v in self.engine.score(reqs, [str(c) for c in batch["completion"]])]
        after = _int_counters(self.engine.stats)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        n = len(reqs)
        # Per-batch facts ride on the batch's first row; the driver sums them.
        meta = json.dumps({"stats": delta, "name": self.engine.name, "model_id": self.engine.model_id,
                           "actor": self.actor_id, "pid": self.pid, "reconstructed": self.reconstructed})
        return pd.DataFrame({"idx": batch["idx"].to_numpy(), "result": result, "meta": [meta] + [""] * (n - 1)})


def _probe_ids(cfg: dict, factory=None) -> tuple[str, str]:
    from prefdata.engines import EngineConfig, get_engine

    eng = (factory or get_engine)(EngineConfig(**{**cfg, "progress": False}))
    return eng.name, eng.model_id


def _explain(err: BaseException) -> str:
    """One line on why a stage failed, from inside Ray's wrappers: the PrefdataError a worker raised
    (e.g. a model that does not load), else the first informative Ray error (a worker that died)."""
    chain, cur = [], err
    while isinstance(cur, BaseException) and cur not in chain and len(chain) < 20:
        chain.append(cur)
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    for c in chain:
        if isinstance(c, PrefdataError):
            return str(c)
    for c in chain:  # an error raised in a worker and only known as traceback text
        found = re.findall(r"^prefdata\.errors\.\w+: (.+)$", str(c), flags=re.MULTILINE)
        if found:
            return found[-1]
    from ray.exceptions import RayActorError

    for c in sorted(chain, key=lambda c: not isinstance(c, RayActorError)):
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(c)).splitlines() if ln.strip()]
        dead = [ln for ln in lines if "died" in ln or "dead" in ln]
        if lines:
            return f"{type(c).__name__}: {(dead or lines)[0][:300]}"
    return type(err).__name__


class RayEngine:
    """Same interface as `CachedEngine`; every call runs as a Ray Data stage over engine actors."""

    def __init__(self, cfg, num_workers: int | None = None, *, batch_size: int | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None, max_restarts: int | None = None,
                 engine_factory=None):
        import ray

        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            try:
                ray.init(address=address or None, ignore_reinit_error=True, include_dashboard=False,
                         log_to_driver=False, **({} if address else {"num_cpus": os.cpu_count()}))
            except Exception as e:  # unreachable head, bad address
                raise PrefdataError(f"cannot start or reach Ray (RAY_ADDRESS={address or 'unset'}): "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        self._ray = ray
        cfg = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg)
        if cfg.get("cache", True) and not cfg.get("cache_path"):
            # Workers may not share the driver's environment (a local Ray keeps the env it started
            # with), so they get the cache path itself, not $PREFDATA_HOME.
            from prefdata.store import home

            cfg["cache_path"] = str(home() / "cache" / "requests.sqlite")
        self.cfg = cfg
        self.num_workers = max(1, num_workers or _env_int("PREFDATA_RAY_WORKERS", 2))
        self.batch_size = max(1, batch_size or _env_int("PREFDATA_RAY_BATCH_SIZE", 32))
        self.num_cpus = num_cpus if num_cpus is not None else _env_float("PREFDATA_RAY_CPUS_PER_WORKER", 1.0)
        self.num_gpus = num_gpus if num_gpus is not None else _env_float("PREFDATA_RAY_GPUS_PER_WORKER", 0.0)
        self.max_restarts = max(0, max_restarts if max_restarts is not None
                                else _env_int("PREFDATA_RAY_MAX_RESTARTS", 3))
        self.start_timeout_s = _env_int("PREFDATA_RAY_START_TIMEOUT", 1800)
        self.factory = engine_factory
        self._ids: tuple[str, str] | None = None
        self.stats: dict[str, int] = {"worker_restarts": 0, **{k: 0 for k in USAGE_COUNTERS}}

    # ------------------------------------------------------------------ identity (lineage)

    def _identity(self) -> tuple[str, str]:
        if self._ids is None:  # no call has run yet: ask a worker once
            probe = self._ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_probe_ids)
            try:
                self._ids = tuple(self._ray.get(probe.remote(self.cfg, self.factory),
                                                timeout=self.start_timeout_s))
            except Exception as e:
                raise PrefdataError(f"Ray executor: could not start an engine worker ({_explain(e)})") from e
        return self._ids

    @property
    def name(self) -> str:
        return self._identity()[0]

    @property
    def model_id(self) -> str:
        return self._identity()[1]

    # ------------------------------------------------------------------ the stage

    def _stage(self, op: str, rows: list[dict], params: SamplingParams | None) -> list:
        import ray.data

        n = len(rows)
        if n == 0:
            return []
        # Spread small calls over every worker, but never start more workers than there are batches.
        batch = max(1, min(self.batch_size, math.ceil(n / self.num_workers)))
        workers = min(self.num_workers, math.ceil(n / batch))
        ds = ray.data.from_items(rows)
        ds.context.wait_for_min_actors_s = self.start_timeout_s
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for actor fault tolerance yet (ray_remote_args is
            # deprecated but still the only way); without them it restarts and retries forever.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                _EngineWorker, fn_constructor_kwargs={"cfg": self.cfg, "factory": self.factory},
                fn_kwargs={"op": op, "params": params}, batch_format="pandas", batch_size=batch,
                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=self.num_cpus,
                num_gpus=self.num_gpus or None, udf_modifying_row_count=False,
                max_restarts=self.max_restarts, max_task_retries=self.max_restarts)
        try:
            out = ds.take_all()
        except Exception as e:
            where = f" at {self.cfg['cache_path']}" if self.cfg.get("cache_path") else ""
            raise PrefdataError(
                f"Ray executor: the {op} stage on {n} requests failed ({_explain(e)}); workers are restarted "
                f"and batches retried up to {self.max_restarts} times (PREFDATA_RAY_MAX_RESTARTS). Finished "
                f"batches are in the request cache{where}: rerun the same command to resume from it.") from e
        if len(out) != n or {int(r["idx"]) for r in out} != set(range(n)):
            raise PrefdataError(f"Ray executor: the {op} stage returned {len(out)} rows that do not match "
                                f"its {n} requests one to one")
        self._account(r["meta"] for r in out if r["meta"])
        results = [None] * n
        for r in out:
            results[int(r["idx"])] = r["result"]
        return results

    def _account(self, metas) -> None:
        pids: dict[str, set] = {}
        reconstructed: set[str] = set()
        for raw in metas:
            m = json.loads(raw)
            for k, v in m["stats"].items():
                self.stats[k] = self.stats.get(k, 0) + int(v)
            self._ids = (m["name"], m["model_id"])
            pids.setdefault(m["actor"], set()).add(m["pid"])
            if m["reconstructed"]:
                reconstructed.add(m["actor"])
        # A restarted actor keeps its id and gets a new process: count the processes beyond the
        # first per actor, or 1 when the only process seen is already a restart.
        self.stats["worker_restarts"] += sum(max(len(p) - 1, int(a in reconstructed)) for a, p in pids.items())

    # ------------------------------------------------------------------ Engine interface

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[list[Completion]]:
        out = self._stage("generate", _request_rows(requests), params)
        return [[Completion(**c) for c in json.loads(r)] for r in out]

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        if len(requests) != len(completions):
            raise PrefdataError(f"score: {len(requests)} requests but {len(completions)} completions")
        rows = _request_rows(requests)
        for row, c in zip(rows, completions):
            row["completion"] = c
        return [float(v) for v in self._stage("score", rows, None)]
