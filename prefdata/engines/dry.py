"""A backend that sends nothing: `prefdata run --dry-run` runs each step's own code against it to count
the requests the step would send and how many the request cache already answers.

It carries the real backend's cache identity (name, server, model fingerprint, sampler), so a request
the cache holds is found exactly as a real run would find it; the cache is read, never written. Every
miss is counted and answered with a placeholder that ends at max_tokens, so a step that parses answers
and retries on failures counts its retries too: the figure is an upper bound on first attempts plus
retries, and the placeholder's tokens (max_tokens each) bound the completion cost.
"""

from __future__ import annotations

from prefdata.engines.base import ChatRequest, Completion, SamplingParams

PLACEHOLDER = "(dry run: no model was called)"


class DryBackend:
    def __init__(self, cfg):
        self.name = cfg.backend
        self.cfg = cfg
        if cfg.backend == "openai":
            import os

            self.model_id = cfg.model
            self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        else:
            from prefdata.engines.transformers import _model_fingerprint
            from prefdata.models import resolve_model

            path = resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
            self.model_id = _model_fingerprint(str(path), cfg.model)
            if cfg.backend == "transformers":
                from prefdata.engines.transformers import TransformersEngine

                self.sampler_version = TransformersEngine.sampler_version
        self.sent: list[tuple[ChatRequest, SamplingParams]] = []
        self.scored = 0
        self.stats: dict = {}

    def generate_samples(self, items, params: SamplingParams, on_batch=None) -> list[Completion]:
        self.sent.extend((r, params) for r, _ in items)
        return [Completion(text=PLACEHOLDER, finish_reason="length", num_tokens=params.max_tokens) for _ in items]

    def score(self, requests, completions) -> list[float]:
        self.scored += len(requests)
        return [0.0] * len(requests)


class ReadOnlyCache:
    """The request cache, read only: a dry run finds what is cached and stores nothing."""

    def __init__(self, cache):
        self.cache = cache
        self.hits = 0

    def get_many(self, keys):
        got = self.cache.get_many(keys) if self.cache is not None else {}
        self.hits += len(got)
        return got

    def get_scores(self, keys):
        return self.cache.get_scores(keys) if self.cache is not None else {}

    def put_many(self, items) -> None:
        pass

    def put_scores(self, items) -> None:
        pass


def dry_engine(cfg):
    """A CachedEngine over DryBackend and the read-only request cache of `cfg`."""
    from pathlib import Path

    from prefdata.engines import CachedEngine, RequestCache

    cache = None
    if cfg.cache:
        from prefdata.store import home

        path = Path(cfg.cache_path) if cfg.cache_path else home() / "cache" / "requests.sqlite"
        cache = RequestCache(path) if path.exists() else None
    return CachedEngine(DryBackend(cfg), ReadOnlyCache(cache))
