"""Run a pipeline's model calls on Ray engine actors that live for the whole run, on one node or many.

    prefdata run pipelines/ray_example.yaml                  # its `executor:` block says type: ray
    prefdata run pipelines/quickstart.yaml --executor ray --set executor.workers=4

The step code is unchanged: `StepContext.engine()` hands it a `RayEngine`, one per engine config
(the run's engine table is keyed by the full config), and every generate/score call is split into
batches of `batch_size` requests that go, one batch per actor at a time, to that engine's pool of
`workers` plain Ray actors (`_EngineWorker`, one engine each). The pool is created lazily on the first
call (never more actors than the call has batches), reused by every later step and stage of the run,
and shut down when the run ends, on success, error or Ctrl-C (`run_pipeline` calls `close()`). So a
vLLM model loads once per worker per run, not once per stage (about 160 s each). Plain actors, not
Ray Data: `map_batches` builds a new actor pool for every dataset. Not `ray.data.llm` either: in Ray
2.60 `build_processor` keeps only `outputs[0]` (n>1 silently gives one sample) and pins vllm==0.29.

If a pool's workers do not fit in the cluster's free resources, idle pools of other engine configs
are shut down first (least recently used first), so a pipeline whose generator and judge are two
models still runs on a cluster that holds one pool at a time; the evicted model reloads if used again.

Ordering and usage. Results are put back in request order by index. Each batch returns the engine's
usage delta (requests, tokens, failures, retries), summed into `RayEngine.stats` and so into the
step's lineage "engine_usage"; `worker_restarts` counts workers seen to die mid-call (Ray restarts
each).

Cache across nodes. Every (request, sample) is seeded from its own content and cached by it, so rows
do not depend on batching or on which worker ran them. The driver alone reads and writes the main
request cache (`engine.cache_path`, default `$PREFDATA_HOME/cache/requests.sqlite`): before sending a
batch it looks its keys up and sends only what is missing (with the samples it already has of a
partly cached request), and it stores every batch that comes back. Workers never open that file
(SQLite WAL cannot span machines); each worker process commits every inner batch its engine finishes
to its own shard, `<cache dir>/requests.shards/<pool>.<worker>.<random>.sqlite`, single-writer and in
rollback-journal mode (see prefdata/engines/cache.py). A shard is only needed for work that never
came back: when a worker dies, the driver merges that worker's shard into the main cache before
retrying its batch, so the retry regenerates only the unfinished requests; at the end of the run it
merges and deletes the shards of its own pool; a new pool first merges the shards left by runs that
are gone (same host: the process is dead; another host: its `<pool>.run` marker was not touched for
an hour, as a live driver touches it at least every minute). On several nodes the cache folder must
be shared storage mounted at the same path on every node; if it is not, everything works except that
a killed batch is regenerated whole (the driver cannot see the worker's shard).

Failure modes (what each costs):

- A worker process dies or its node is lost mid-batch: Ray restarts the actor (`max_restarts`), on
  another node if the lost one had the only room; the driver merges the dead worker's shard and retries
  the batch, which regenerates only the requests its shard lacks. Cost: one model load, at most one
  batch's unfinished requests. A batch that fails more than `max_restarts` times, or a pool with no
  live actor left, ends the call in a PrefdataError naming the stage; rerunning resumes from the cache.
- A restart that finds no room (the lost node held the only matching resources): the call goes on
  with the actors still alive; if none is, it fails after `start_timeout_s`.
- A shard half written when its node died: the next opener rolls back the unfinished transaction from
  its journal; a shard SQLite cannot read at all is set aside as `.corrupt`. Cost: those requests
  are generated again.
- The driver dies (kill -9, lost head node): actors die with their owner; finished batches are in the
  main cache, partial ones in shards merged by the next run. Cost: the batches in flight, minus what
  their shards hold.
- Ray reports a worker unreachable although it still runs (a network partition): its batch is retried
  elsewhere and its shard merged and deleted; whatever it commits later is lost. Cost: duplicate work.
- Two drivers on one cache folder: each pool writes only its own shards and merges only its own or
  dead runs' shards, so shards never collide. The main cache is WAL SQLite, safe for several drivers on
  one machine; two driver machines must use separate cache paths (`engine.cache_path`) or take turns.

Settings come from the pipeline's `executor:` block (prefdata/executors/__init__.py documents each
field and the precedence of RAY_ADDRESS / PREFDATA_RAY_* over the YAML). On a cluster the workers need
prefdata and the backend's packages installed (and, for the openai backend, the API key variable in
their environment).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefdata.engines.base import ChatRequest, Completion, SamplingParams
from prefdata.errors import PrefdataError
from prefdata.executors import ExecutorConfig
from prefdata.store.core import pid_alive

USAGE_COUNTERS = ("requests", "generated_tokens", "failed", "retries", "prompt_tokens", "completion_tokens")
STALE_S = 3600.0  # a pool marker untouched this long belongs to a dead driver on another host
TOUCH_S = 60.0  # a live driver touches its marker at least this often
RESTART_POLL_S = 0.5  # a restarting actor answers "unavailable" at once; ask again after this long


def _int_counters(stats: dict | None) -> dict[str, int]:
    return {k: v for k, v in (stats or {}).items() if isinstance(v, int) and not isinstance(v, bool)}


class _ShardView:
    """What a worker's engine sees as its request cache: the samples the driver already has for the
    batch in hand, and this worker's own shard for everything it finishes.

    The shard file is created on the first write, after the driver has learned its name, so the driver
    never mistakes a fresh incarnation's shard for a dead one's. Nothing is read back from the shard:
    the driver already holds whatever came back, and a dead worker's shard is merged by the driver."""

    def __init__(self, path: str | None):
        self.path, self.db, self.error = path, None, None
        self.gen: dict[str, Completion] = {}
        self.scores: dict[str, float] = {}

    def _shard(self):
        if self.db is None and self.path and self.error is None:
            from prefdata.engines.cache import RequestCache

            try:
                self.db = RequestCache(self.path, shard=True)
            except PrefdataError as e:  # a folder this node cannot write: run on, without a shard
                self.error = str(e)
        return self.db

    def _write(self, fn: str, items: dict) -> None:
        db = self._shard()
        if db is not None and items:
            try:
                getattr(db, fn)(items)
            except PrefdataError as e:  # a full disk on this node must not fail the batch: it still returns
                self.error, self.db = str(e), None

    def get_many(self, keys):
        return {k: self.gen[k] for k in keys if k in self.gen}

    def put_many(self, items):
        self._write("put_many", items)

    def get_scores(self, keys):
        return {k: self.scores[k] for k in keys if k in self.scores}

    def put_scores(self, items):
        self._write("put_scores", items)


class _EngineWorker:
    """One engine in one Ray actor: built once per process, fed batches for the whole run."""

    def __init__(self, cfg: dict, factory, shard_dir: str | None, pool: str, index: int):
        import ray

        from prefdata.engines import EngineConfig, get_engine

        # The engine's own cache is replaced by the shard view: workers never open the main file.
        self.engine = (factory or get_engine)(EngineConfig(**{**cfg, "cache": False, "progress": False}))
        shard = f"{shard_dir}/{pool}.{index}.{uuid.uuid4().hex[:12]}.sqlite" if shard_dir else None
        self.view = _ShardView(shard)
        if shard_dir:
            self.engine.cache = self.view
        rt = ray.get_runtime_context()
        self.info = {"name": self.engine.name, "model_id": self.engine.model_id,
                     "cache_id": getattr(self.engine, "cache_id", f"{self.engine.name}:{self.engine.model_id}"),
                     "actor": rt.get_actor_id() or "", "pid": os.getpid(), "node": rt.get_node_id(),
                     "reconstructed": bool(rt.was_current_actor_reconstructed), "shard": shard}

    def hello(self) -> dict:
        return {**self.info, "shard_error": self.view.error}

    def _run(self, fn, known: dict):
        before = _int_counters(self.engine.stats)
        out = fn()
        after = _int_counters(self.engine.stats)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        self.view.gen, self.view.scores = {}, {}
        return out, {"stats": delta, "pid": os.getpid(), "shard": self.view.path, "shard_error": self.view.error}

    def generate(self, requests: list[ChatRequest], params: SamplingParams, known: dict):
        self.view.gen = known
        return self._run(lambda: self.engine.generate(requests, params), known)

    def score(self, requests: list[ChatRequest], completions: list[str], known: dict):
        self.view.scores = known
        return self._run(lambda: [float(v) for v in self.engine.score(requests, completions)], known)

    def close(self) -> None:
        if self.view.db is not None:
            self.view.db.close()
            self.view.db = None


def _explain(err: BaseException) -> str:
    """One line on why a call failed, from inside Ray's wrappers: the PrefdataError a worker raised
    (e.g. a model that does not load), else what happened to the worker."""
    chain, cur = [], err
    while isinstance(cur, BaseException) and cur not in chain and len(chain) < 20:
        chain.append(cur)
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    for c in chain:
        if isinstance(c, PrefdataError) and not type(c).__module__.startswith("ray"):
            return str(c)
    for c in chain:  # an error raised in a worker and only known as traceback text
        found = re.findall(r"^prefdata\.errors\.\w+: (.+)$", str(c), flags=re.MULTILINE)
        if found:
            return found[-1]
    from ray.exceptions import RayActorError

    for c in chain:
        if isinstance(c, RayActorError):
            lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(c)).splitlines() if ln.strip()]
            return f"a worker died or became unreachable: {type(c).__name__}: {(lines or [''])[0][:300]}"
    for c in chain:
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(c)).splitlines() if ln.strip()]
        if lines:
            return f"{type(c).__name__}: {lines[-1][:300]}"
    return type(err).__name__


@dataclass
class _Actor:
    index: int
    handle: Any
    state: str = "starting"  # starting (hello pending or to be asked again) | idle | busy | dead
    ref: Any = None  # the hello or batch call in flight
    retry_at: float = 0.0  # starting, ref None: when to ask a restarting actor again
    deadline: float = 0.0  # starting: when its (re)start counts as failed
    pid: int | None = None
    shard: str | None = None  # this incarnation's shard
    job: Any = None  # busy: what it was sent (batch number, requests sent, keys already known)


@dataclass
class _Call:
    op: str
    n: int
    attempts: dict = field(default_factory=dict)
    last_error: BaseException | None = None


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every RayEngine with a pool, for eviction when the cluster is full


def _connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    try:
        # "local" says start one: with None, Ray would join whatever cluster /tmp/ray last recorded.
        ray.init(address=address or "local", ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False, **({} if address else {"num_cpus": os.cpu_count()}))
    except Exception as e:  # unreachable head, bad address
        raise PrefdataError(f"cannot start or reach Ray (executor.address / RAY_ADDRESS={address or 'unset'}): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


class RayEngine:
    """Same interface as `CachedEngine`; every call runs on this engine config's pool of Ray actors."""

    def __init__(self, cfg, settings: ExecutorConfig | None = None, *, num_workers: int | None = None,
                 batch_size: int | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                 max_restarts: int | None = None, engine_factory=None):
        import ray

        settings = settings or ExecutorConfig.from_env()
        given = {"workers": num_workers, "batch_size": batch_size, "cpus_per_worker": num_cpus,
                 "gpus_per_worker": num_gpus, "max_restarts": max_restarts}
        settings = settings.model_copy(update={k: v for k, v in given.items() if v is not None})
        _connect(settings.address)
        self._ray = ray
        self.settings = settings
        cfg = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg)
        if cfg.get("cache", True) and not cfg.get("cache_path"):
            from prefdata.store import home

            cfg["cache_path"] = str(home() / "cache" / "requests.sqlite")
        self.cfg = cfg
        self.num_workers, self.batch_size = settings.workers, settings.batch_size
        self.num_cpus, self.num_gpus = settings.cpus_per_worker, settings.gpus_per_worker
        self.max_restarts, self.start_timeout_s = settings.max_restarts, settings.start_timeout_s
        self.factory = engine_factory
        self.pool_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._main = None  # the driver's request cache, opened on first use
        self._shard_dir: Path | None = None
        if cfg.get("cache", True):
            from prefdata.engines.cache import shard_dir

            self._shard_dir = shard_dir(cfg["cache_path"])
        self._pool: list[_Actor] = []
        self._ids: tuple[str, str] | None = None
        self._cache_id: str | None = None
        self._in_call = False
        # The dispatch loop hands every answer to the call in progress: two threads calling at once
        # would take each other's results, so calls on one engine take turns.
        self._lock = threading.RLock()
        self._last_used = 0.0
        self._touched = 0.0
        self._warned: set[str] = set()
        self.stats: dict[str, int] = {"worker_restarts": 0, **{k: 0 for k in USAGE_COUNTERS}}
        self.pools_started = 0  # how many times this engine built a pool (1 for a whole run unless evicted)

    # ------------------------------------------------------------------ cache (driver side)

    def _cache(self):
        if self._main is None and self.cfg.get("cache", True):
            from prefdata.engines.cache import RequestCache

            self._main = RequestCache(self.cfg["cache_path"])
        return self._main

    def _merge(self, shards) -> None:
        from prefdata.engines.cache import merge_shards

        cache = self._cache()
        if cache is not None:
            merge_shards(cache, [s for s in shards if s], warn=self._warn)

    def _warn(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            print(f"warning: {msg}", file=sys.stderr)

    def _marker(self) -> Path | None:
        return self._shard_dir / f"{self.pool_id}.run" if self._shard_dir else None

    def _touch(self, force: bool = False) -> None:
        now = time.monotonic()
        marker = self._marker()
        if marker is None or (not force and now - self._touched < TOUCH_S):
            return
        self._touched = now
        try:
            if force or not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            else:
                os.utime(marker)
        except OSError as e:
            self._warn(f"cannot write the Ray pool marker {marker} ({e.strerror or e}); shards left by a crash "
                       "of this run will be merged only by a run on this host")

    def _recover_leftovers(self) -> None:
        """Merge the shards of pools whose driver is gone (a crash, a kill -9), then drop them."""
        d = self._shard_dir
        if d is None or not d.is_dir():
            return
        live, host, now = set(), socket.gethostname(), time.time()
        for marker in d.glob("*.run"):
            pool = marker.name[:-4]
            try:
                owner = json.loads(marker.read_text())
                same_host = owner.get("host") == host
                alive = pid_alive(int(owner["pid"])) if same_host else now - marker.stat().st_mtime < STALE_S
            except (OSError, ValueError, KeyError, TypeError):
                alive = False
            if alive and pool != self.pool_id:
                live.add(pool)
        stale = [p for p in d.glob("*.sqlite") if p.name.split(".")[0] not in live | {self.pool_id}]
        if stale:
            self._merge(stale)
        for marker in d.glob("*.run"):
            pool = marker.name[:-4]
            if pool not in live and pool != self.pool_id and not any(d.glob(f"{pool}.*.sqlite")):
                try:
                    marker.unlink()
                except OSError:
                    pass

    # ------------------------------------------------------------------ the pool

    def _needs(self) -> dict[str, float]:
        need = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.settings.resources_per_worker}
        return {k: v for k, v in need.items() if v}

    def _make_room(self, count: int) -> None:
        """Shut down idle pools of other engine configs (least recently used first) while `count` more
        workers of this one do not fit in the cluster's free resources."""
        def fits() -> bool:
            free = self._ray.available_resources()
            return all(free.get(k, 0.0) + 1e-9 >= v * count for k, v in self._needs().items())

        others = sorted((e for e in _LIVE if e is not self and e._pool and not e._in_call),
                        key=lambda e: e._last_used)
        for other in others:
            if fits():
                return
            other.close()
            for _ in range(20):  # resources come back once the killed processes are gone
                if fits():
                    return
                time.sleep(0.25)

    def _grow(self, k: int) -> None:
        k = min(k, self.num_workers)
        if len(self._pool) >= k:
            return
        if not self._pool:
            self.pools_started += 1
            _LIVE.add(self)
            self._touch(force=True)
            self._recover_leftovers()
        self._make_room(k - len(self._pool))
        remote = self._ray.remote(_EngineWorker).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, resources=dict(self.settings.resources_per_worker),
            max_restarts=self.max_restarts, max_task_retries=0, scheduling_strategy="SPREAD")
        now = time.monotonic()
        for i in range(len(self._pool), k):
            handle = remote.remote(self.cfg, self.factory, str(self._shard_dir) if self._shard_dir else None,
                                   self.pool_id, i)
            self._pool.append(_Actor(index=i, handle=handle, deadline=now + self.start_timeout_s))

    def close(self) -> None:
        """Shut the pool down and merge its shards into the main cache. Safe to call twice."""
        pool, self._pool = self._pool, []
        _LIVE.discard(self)
        if not pool or not self._ray.is_initialized():
            return
        ray = self._ray
        try:
            idle = [a.handle.close.remote() for a in pool if a.state == "idle"]
            if idle:
                ray.wait(idle, num_returns=len(idle), timeout=10)
            for a in pool:
                ray.kill(a.handle, no_restart=True)
            # A killed worker may be mid-commit: wait until Ray has seen each one go before merging.
            pending = [a.ref for a in pool if a.ref is not None]
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=10)
        finally:
            if self._shard_dir is not None and self._shard_dir.is_dir():
                self._merge(self._shard_dir.glob(f"{self.pool_id}.*.sqlite"))
                marker = self._marker()
                try:
                    marker.unlink()
                except OSError:
                    pass

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ dispatch

    def _hello(self, a: _Actor, info: dict) -> None:
        if a.pid is None and info["reconstructed"]:  # it died before we ever heard from it
            self.stats["worker_restarts"] += 1
        a.pid, a.shard, a.state, a.ref = info["pid"], info["shard"], "idle", None
        self._ids, self._cache_id = (info["name"], info["model_id"]), info["cache_id"]
        self._shard_note(info.get("shard_error"))

    def _shard_note(self, error: str | None) -> None:
        if error:
            self._warn(f"a Ray worker cannot write its cache shard ({error}); a batch it is killed in is "
                       "generated again whole")

    def _failure(self, call: _Call, err: BaseException) -> PrefdataError:
        where = f" at {self.cfg['cache_path']}" if self.cfg.get("cache_path") else ""
        return PrefdataError(
            f"Ray executor: the {call.op} stage on {call.n} requests failed ({_explain(err)}); workers are "
            f"restarted and batches retried up to {self.max_restarts} times (executor.max_restarts / "
            f"PREFDATA_RAY_MAX_RESTARTS). Finished batches are in the request cache{where}: rerun the same "
            f"command to resume from it.")

    def _step(self, call: _Call | None, queue: deque, submit, finish) -> None:
        """One turn of the dispatch loop: hand queued work to idle actors, then handle one answer."""
        now = time.monotonic()
        self._touch()
        for a in self._pool:
            if a.state == "starting" and a.ref is None and now >= a.retry_at:
                a.ref = a.handle.hello.remote()
            while a.state == "idle" and queue:
                job = submit(queue.popleft(), a.handle)
                if job is not None:
                    a.ref, a.job, a.state = job[0], job[1], "busy"
        live = [a for a in self._pool if a.state != "dead"]
        if not live:
            err = call.last_error if call and call.last_error else RuntimeError("every worker is dead")
            raise (self._failure(call, err) if call else
                   PrefdataError(f"Ray executor: could not start an engine worker ({_explain(err)})"))
        waits = [a.retry_at - now for a in self._pool if a.state == "starting" and a.ref is None]
        refs = [a.ref for a in self._pool if a.ref is not None]
        if not refs and not waits:
            return
        timeout = max(0.05, min([TOUCH_S, *waits]))
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout) if refs else ([], time.sleep(timeout))
        for ref in ready:
            self._settle(next(x for x in self._pool if x.ref is ref), call, queue, finish, now)
        late = [a for a in self._pool if a.state == "starting" and now > a.deadline]
        if late and not any(a.state in ("idle", "busy") for a in self._pool):
            need = ", ".join(f"{k} {v:g}" for k, v in self._needs().items()) or "no resources"
            raise PrefdataError(f"Ray executor: no engine worker started within {self.start_timeout_s:g}s "
                                f"(executor.start_timeout_s); each needs {need}: does the cluster have room "
                                "and can its nodes load the model?")

    def _settle(self, a: _Actor, call: _Call | None, queue: deque, finish, now: float) -> None:
        """Take the answer actor `a` has ready: its hello, a batch's results, or the error it ended in."""
        from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError

        # A batch whose answer died with its node is lost work, like a dead worker: retried, not fatal.
        lost = (RayActorError, ObjectLostError, NodeDiedError)
        was = a.state
        try:
            value = self._ray.get(a.ref)
        except lost as e:
            a.ref = None
            if getattr(e, "actor_init_failed", False):  # the engine itself cannot be built: no retry helps
                raise PrefdataError(f"Ray executor: could not start an engine worker ({_explain(e)})") from e
            self._lost(a, e, was, call, queue, now)
        except Exception as e:  # the engine raised inside the worker: a bug or bad input, not a lost worker
            a.ref, a.state = None, "idle"
            if was == "busy":
                raise (self._failure(call, e) if call else PrefdataError(_explain(e))) from e
            raise PrefdataError(f"Ray executor: could not start an engine worker ({_explain(e)})") from e
        else:
            if was == "starting":
                self._hello(a, value)
            else:
                self._answered(a, value, finish)

    def _lost(self, a: _Actor, e: BaseException, was: str, call: _Call | None, queue: deque, now: float) -> None:
        """Actor `a` died (or its node did) while starting or with a batch: retry the batch, or wait."""
        from ray.exceptions import ActorUnavailableError

        if was == "busy":
            b = a.job["batch"]
            call.attempts[b] = call.attempts.get(b, 0) + 1
            call.last_error = e
            self.stats["worker_restarts"] += 1  # counted when seen to die: its restart may come later
            # The dead incarnation's shard holds what it finished of this batch: merge it, so
            # the retry sends only the rest.
            self._merge([a.shard])
            if call.attempts[b] > self.max_restarts:
                raise self._failure(call, e) from e
            queue.appendleft(b)
            a.state, a.job, a.retry_at, a.deadline = "starting", None, now, now + self.start_timeout_s
        elif isinstance(e, ActorUnavailableError):  # restarting: ask again shortly
            a.retry_at = now + RESTART_POLL_S
        else:  # out of restarts
            a.state = "dead"
            if call is not None:
                call.last_error = e

    def _answered(self, a: _Actor, value: tuple, finish) -> None:
        """A batch's results from actor `a`: its stats counted, its cache shard noted, the job finished."""
        out, meta = value
        a.state, a.ref = "idle", None
        if meta["pid"] != a.pid:  # came back as a new process without us seeing it go
            self.stats["worker_restarts"] += 1
            self._merge([a.shard])
            a.pid, a.shard = meta["pid"], meta["shard"]
        for k, v in meta["stats"].items():
            self.stats[k] = self.stats.get(k, 0) + int(v)
        self._shard_note(meta.get("shard_error"))
        finish(a.job, out)
        a.job = None

    def _ready(self) -> None:
        """At least one actor up: its engine's name, model id and cache id are then known."""
        self._grow(1)
        while not any(a.state in ("idle", "busy") for a in self._pool):
            self._step(None, deque(), lambda b, h: None, lambda job, out: None)

    def _identity(self) -> tuple[str, str]:
        if self._ids is None:
            with self._lock:
                self._ready()
        return self._ids

    @property
    def name(self) -> str:
        return self._identity()[0]

    @property
    def model_id(self) -> str:
        return self._identity()[1]

    def _call(self, op: str, requests: list[ChatRequest], extra, params: SamplingParams | None) -> list:
        n = len(requests)
        if n == 0:
            return []
        with self._lock:
            return self._call_locked(op, requests, extra, params, n)

    def _call_locked(self, op: str, requests: list[ChatRequest], extra, params, n: int) -> list:
        from prefdata.engines.cache import request_key, score_key

        self._in_call = True
        try:
            self._ready()
            cache, cid = self._cache(), self._cache_id
            if op == "generate":
                keys = [[request_key(cid, r, params, s) for s in range(params.n)] for r in requests]
            else:
                keys = [[score_key(cid, r, c)] for r, c in zip(requests, extra)]
            results: list = [None] * n

            def lookup(idx: list[int]) -> dict:
                if cache is None:
                    return {}
                flat = [k for i in idx for k in keys[i]]
                return cache.get_many(flat) if op == "generate" else cache.get_scores(flat)

            def settle(i: int, got: dict) -> bool:
                if all(k in got for k in keys[i]):
                    results[i] = [got[k] for k in keys[i]] if op == "generate" else got[keys[i][0]]
                    return True
                return False

            first = lookup(list(range(n)))
            todo = [i for i in range(n) if not settle(i, first)]
            # Spread small calls over every worker, but never start more workers than there are batches.
            size = max(1, min(self.batch_size, math.ceil(len(todo) / self.num_workers))) if todo else 1
            batches = [todo[j:j + size] for j in range(0, len(todo), size)]
            call, queue = _Call(op, n), deque(range(len(batches)))
            left = {b for b in range(len(batches))}

            def submit(b: int, handle):
                # Looked up again at send time: a retried batch finds what its dead worker had finished.
                got = lookup(batches[b]) if call.attempts.get(b) else {}
                sent = [i for i in batches[b] if not settle(i, got)]
                if not sent:
                    left.discard(b)
                    return None
                known = {k: got[k] for i in sent for k in keys[i] if k in got}
                reqs = [requests[i] for i in sent]
                ref = (handle.generate.remote(reqs, params, known) if op == "generate" else
                       handle.score.remote(reqs, [extra[i] for i in sent], known))
                return ref, {"batch": b, "sent": sent, "known": known}

            def finish(job: dict, out: list) -> None:
                sent, known = job["sent"], job["known"]
                if len(out) != len(sent):
                    raise PrefdataError(f"Ray executor: the {op} stage returned {len(out)} rows that do not "
                                        f"match its {len(sent)} requests one to one")
                fresh = {}
                for i, o in zip(sent, out):
                    results[i] = o
                    vals = o if op == "generate" else [o]
                    fresh.update({k: v for k, v in zip(keys[i], vals) if k not in known})
                if cache is not None and fresh:
                    cache.put_many(fresh) if op == "generate" else cache.put_scores(fresh)
                left.discard(job["batch"])

            self._grow(len(batches))
            while left:
                self._step(call, queue, submit, finish)
            if any(r is None for r in results):
                raise PrefdataError(f"Ray executor: the {op} stage lost {sum(r is None for r in results)} of its "
                                    f"{n} results")
            return results
        finally:
            self._in_call = False
            self._last_used = time.monotonic()

    # ------------------------------------------------------------------ Engine interface

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[list[Completion]]:
        return self._call("generate", requests, None, params)

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        if len(requests) != len(completions):
            raise PrefdataError(f"score: {len(requests)} requests but {len(completions)} completions")
        return [float(v) for v in self._call("score", requests, list(completions), None)]
