"""Any OpenAI-compatible chat server (vLLM serve, llama.cpp server, hosted APIs) as an engine.

The official `openai` async client with its own retries turned off: we retry 429, 5xx, timeouts,
dropped connections and malformed responses ourselves, with exponential backoff plus jitter,
honouring `Retry-After`, up to `max_retries`. A request that still fails becomes a Completion with
finish_reason "error" and the error text: it is never cached, never silently dropped, and the
generators count it as a failed attempt. Concurrency is bounded by a semaphore (`concurrency`).

The API key is read from the environment variable named by `api_key_env` and is only ever handed to
the client: it is not part of the config, the cache key, the lineage or any error message.
Each (request, sample) is its own call with seed = seed + seed_offset + sample, so a sample's text
depends only on the request, as the cache requires.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time

from prefdata.engines.base import ChatRequest, Completion, SamplingParams
from prefdata.errors import PrefdataError


def _redact(text: str, secret: str | None) -> str:
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"(sk-[A-Za-z0-9_-]{6})[A-Za-z0-9_-]+", r"\1***", text)


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg):
        import openai

        self.cfg = cfg
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        if not self.base_url:
            raise PrefdataError("openai backend: set engine.base_url in the YAML or OPENAI_BASE_URL in the environment")
        self._key = os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers accept any key
        self._openai = openai
        self.model_id = cfg.model
        self.stats = {"requests": 0, "failed": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def _client(self):
        return self._openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key, max_retries=0,
                                        timeout=self.cfg.timeout_s)

    def _retry_after(self, err) -> float | None:
        resp = getattr(err, "response", None)
        value = resp.headers.get("retry-after") if resp is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def _retryable(self, err) -> bool:
        o = self._openai
        if isinstance(err, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError,
                            o.APIResponseValidationError, ValueError)):
            return True
        return isinstance(err, o.APIStatusError) and err.status_code >= 500

    async def _one(self, client, sem, req: ChatRequest, sample: int, params: SamplingParams) -> Completion:
        messages = list(req.messages)
        extra = {}
        if req.assistant_prefix:
            # vLLM's way to continue an assistant turn; other servers may ignore it.
            messages = messages + [{"role": "assistant", "content": req.assistant_prefix}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        last = "no attempt"
        async with sem:
            for attempt in range(self.cfg.max_retries + 1):
                try:
                    resp = await client.chat.completions.create(
                        model=self.cfg.model, messages=messages, n=1, temperature=params.temperature,
                        top_p=params.top_p, max_tokens=params.max_tokens, stop=list(params.stop) or None,
                        seed=params.seed + req.seed_offset + sample, extra_body=extra or None)
                    if not resp.choices:
                        raise ValueError("server returned no choices")
                    ch = resp.choices[0]
                    if ch.message is None or ch.message.content is None:
                        raise ValueError("server returned an empty choice")
                    if resp.usage:
                        self.stats["prompt_tokens"] += resp.usage.prompt_tokens or 0
                        self.stats["completion_tokens"] += resp.usage.completion_tokens or 0
                    return Completion(text=ch.message.content, finish_reason=ch.finish_reason or "stop",
                                      num_tokens=(resp.usage.completion_tokens if resp.usage else 0) or 0)
                except Exception as err:  # noqa: BLE001 - classified below
                    last = f"{type(err).__name__}: {_redact(err, self._key)}"
                    if isinstance(err, self._openai.NotFoundError):
                        return self._fail(f"model '{self.cfg.model}' not found on {self.base_url}: {last}")
                    if not self._retryable(err) or attempt == self.cfg.max_retries:
                        break
                    self.stats["retries"] += 1
                    wait = self._retry_after(err)
                    if wait is None:
                        wait = min(30.0, 0.25 * 2 ** attempt) * (0.5 + random.random())  # backoff with jitter
                    await asyncio.sleep(wait)
        return self._fail(last)

    def _fail(self, msg: str) -> Completion:
        self.stats["failed"] += 1
        return Completion(text="", finish_reason="error", error=msg[:500])

    async def _run(self, items, params, on_batch):
        sem = asyncio.Semaphore(self.cfg.concurrency)
        out: list[Completion | None] = [None] * len(items)
        async with self._client() as client:
            async def job(i, req, s):
                out[i] = await self._one(client, sem, req, s, params)
                if on_batch is not None:
                    on_batch([i], [out[i]])  # cache each answer as it lands: a kill loses only in-flight ones

            await asyncio.gather(*(job(i, r, s) for i, (r, s) in enumerate(items)))
        return out

    def generate_samples(self, items: list[tuple[ChatRequest, int]], params: SamplingParams, on_batch=None):
        from rich.progress import Progress

        self.stats["requests"] += len(items)
        t0 = time.time()
        with Progress(disable=not self.cfg.progress, transient=True) as bar:
            task = bar.add_task(f"requests to {self.base_url}", total=len(items))

            def done(pos, comps):
                bar.update(task, advance=len(pos))
                if on_batch is not None:
                    on_batch(pos, comps)

            out = asyncio.run(self._run(items, params, done))
        self.stats["last_call_s"] = round(time.time() - t0, 3)
        return out

    def score(self, requests, completions):
        raise PrefdataError("the openai backend cannot score log-likelihoods; use a transformers or vllm engine "
                            "for log-likelihood judges")
