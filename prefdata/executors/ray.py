"""Run a pipeline's model calls on Ray: one engine per worker actor, same rows as the local executor.

    prefdata run pipelines/quickstart.yaml --executor ray

The step code is unchanged: `StepContext.engine()` hands it a `RayEngine`, which shards every
generate/score call across worker actors, each holding its own engine (model loaded once per
worker). Every (request, sample) is seeded from its own content and goes through the request cache,
so the rows do not depend on the sharding, and a worker that dies mid-run is replaced and its shard
resubmitted: what it finished is read back from the cache, not regenerated.

Pointing it at a cluster: set `RAY_ADDRESS=ray://head:10001` (or `auto` on a cluster node) and
`PREFDATA_RAY_WORKERS` to the number of engine actors; with no address a local Ray is started with
this machine's CPUs. Put `$PREFDATA_HOME` on shared storage if workers on different nodes should
share the request cache.
"""

from __future__ import annotations

import os

from prefdata.engines.base import ChatRequest, Completion, SamplingParams


class _Worker:
    def __init__(self, cfg: dict):
        from prefdata.engines import EngineConfig, get_engine

        self.engine = get_engine(EngineConfig(**{**cfg, "progress": False}))

    def ids(self):
        return self.engine.name, self.engine.model_id

    def generate(self, requests, params):
        return self.engine.generate(requests, params)

    def score(self, requests, completions):
        return self.engine.score(requests, completions)

    def pid(self):
        return os.getpid()


class RayEngine:
    def __init__(self, cfg, num_workers: int | None = None):
        import ray

        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address or None, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, **({} if address else {"num_cpus": os.cpu_count()}))
        self._ray = ray
        self.cfg = cfg.model_dump()
        n = num_workers or int(os.environ.get("PREFDATA_RAY_WORKERS", "2"))
        self._cls = ray.remote(num_cpus=0)(_Worker)
        self.workers = [self._cls.remote(self.cfg) for _ in range(n)]
        self.name, self.model_id = ray.get(self.workers[0].ids.remote())
        self.stats = {"worker_restarts": 0}

    def _map(self, method: str, n: int, args_for_shard):
        """Round-robin shards over workers; a dead worker is replaced and its shard resubmitted once."""
        shards = [list(range(i, n, len(self.workers))) for i in range(len(self.workers))]
        shards = [s for s in shards if s]
        futures = {k: getattr(self.workers[k], method).remote(*args_for_shard(s)) for k, s in enumerate(shards)}
        results = {}
        for k, fut in futures.items():
            try:
                results[k] = self._ray.get(fut)
            except self._ray.exceptions.RayActorError:
                self.stats["worker_restarts"] += 1
                self.workers[k] = self._cls.remote(self.cfg)
                results[k] = self._ray.get(getattr(self.workers[k], method).remote(*args_for_shard(shards[k])))
        out = [None] * n
        for k, s in enumerate(shards):
            for i, r in zip(s, results[k]):
                out[i] = r
        return out

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[list[Completion]]:
        return self._map("generate", len(requests), lambda s: ([requests[i] for i in s], params))

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        return self._map("score", len(requests), lambda s: ([requests[i] for i in s], [completions[i] for i in s]))
