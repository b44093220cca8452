"""The one engine interface every backend implements (transformers, vLLM, OpenAI-compatible).

Pipelines, generators and judges only ever see `Engine`; swapping backends changes the YAML
`engine:` block and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]  # [{"role": "user", "content": "..."}], TRL/vLLM conversational format


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: bool = False

    def cache_fields(self) -> dict:
        """The fields that change the output. Batch size and concurrency never go in a cache key."""
        # Field by field rather than dataclasses.asdict, whose recursive copy cost ~28 us per request
        # key (one key per sample, all computed before the first request is sent).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class ChatRequest:
    messages: Messages
    # Template version of whatever built `messages`; part of the cache key so a reworded
    # prompt never reuses stale outputs.
    template_version: str = ""
    # Optional per-request seed offset; the effective seed is params.seed + seed_offset.
    seed_offset: int = 0
    # Free-form id for bookkeeping (row id), not part of the cache key.
    request_id: str = ""
    # Optional continuation: an assistant prefix the model must continue (used by RLCD-like
    # prompts and judges that score "Score:" tokens). Part of the cache key.
    assistant_prefix: str = ""


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    num_tokens: int = 0
    logprob: float | None = None  # sum of token log-probs when requested
    error: str | None = None  # set when finish_reason == "error" (OpenAI engine failures)


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers" | "vllm" | "openai" | "scripted"
    model_id: str  # what lineage records

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[list[Completion]]:
        """Return `params.n` completions for each request, in request order."""
        ...

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        """Sum log-likelihood of each completion given its request's chat prompt."""
        ...


class Backend(Protocol):
    """What a backend implements; `prefdata.engines.CachedEngine` turns it into an Engine.

    `generate_samples` returns one completion per (request, sample index). The text must depend
    only on the request, the params and the sample index (never on batching), so the cache can
    store and replay each sample on its own.
    """

    name: str
    model_id: str

    def generate_samples(self, items: list[tuple[ChatRequest, int]], params: SamplingParams,
                         on_batch=None) -> list[Completion]:
        """`on_batch(positions, completions)`, when given, is called as each batch finishes
        (positions index into `items`); the cache commits there."""
        ...

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        ...


def row_seed(req: ChatRequest, params: SamplingParams, sample: int) -> int:
    """The seed of one (request, sample): a hash of the request's content, seed and sample index.

    Local engines (transformers, vLLM) seed each sample with it, so a sample's text never depends on
    which other requests share its batch; that is what lets the cache replay samples one by one.
    """
    blob = json.dumps([params.seed + req.seed_offset, sample, req.messages, req.assistant_prefix,
                       req.template_version], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") & ((1 << 63) - 1)
