"""A scalar reward model read as r(conversation): the one scorer behind the `reward_model` voter
(r(chosen) - r(rejected) per pair, `voters.reward_model_votes`) and the per-candidate reward of
rejection sampling (`score.reward_model_scores`).

Its spec lives here, not in `voters.py`, so that both callers import it from below them (voters and
score both need it; score also imports the judge voter's spec from voters).

The texts are the tokenizer's chat template when it has one, else the "Role: text" transcript
(`prompts.pairwise.render_conversation`); batched by length (less padding) and truncated from the
left, so the answer being scored is always read whole. A model trained with `whiten: true` is read on
its training scale (`trainers.reward_norm`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prefdata.errors import PrefdataError

Messages = list[dict]


class RewardModelVoter(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    type: Literal["reward_model"] = "reward_model"
    model: str = Field(..., description="Local path or hub id of a sequence-classification model with 1 output.")
    max_length: int = Field(1024, ge=16)
    batch_size: int = Field(8, ge=1)
    trust_remote_code: bool = False


def conversation_rewards(spec: RewardModelVoter, groups: list[list[Messages]], *, unit: str = "texts",
                         progress: bool = True) -> list[np.ndarray]:
    """r(conversation) for every conversation (prompt turns + the answer's turns) of each group, the
    model loaded once. Each group is length-sorted and batched on its own, so a group's rewards do not
    depend on what else is scored with it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prefdata.models import resolve_model
    from prefdata.progress import progress_bar
    from prefdata.prompts.pairwise import render_conversation
    from trainers.reward_norm import apply_reward_norm  # torch-free; a no-op without reward_norm.json

    path = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=spec.trust_remote_code).eval()
    if model.config.num_labels != 1:
        raise PrefdataError(f"reward model '{spec.model}' has {model.config.num_labels} outputs; a reward model "
                            "needs exactly 1 (a scalar reward)")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    tok.truncation_side = "left"  # the answer being scored is at the end; never cut it off
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    model.to(device)
    templated = bool(getattr(tok, "chat_template", None))

    def rewards(convs: list[Messages], advance) -> np.ndarray:
        texts = [tok.apply_chat_template(c, tokenize=False) if templated else render_conversation(c) for c in convs]
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
