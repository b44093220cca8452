"""Whitened rewards (Llama 2, Touvron et al. 2023, sec. 3.2.2): a reward model trained with
`whiten=true` saves the mean and standard deviation of its rewards on its own training answers in
`reward_norm.json` beside the weights, and whoever scores with it maps r -> (r - mean) / std, so a
threshold or a mix of reward sources means the same whatever the head's offset and scale.

    from trainers.reward_norm import apply_reward_norm
    rewards = apply_reward_norm(model_dir, raw_rewards)   # unchanged when the model has no reward_norm.json

Kept apart from `trainers.reward` so scoring code can read it without importing torch or TRL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefdata.errors import PrefdataError

FILE = "reward_norm.json"


@dataclass(frozen=True)
class RewardNorm:
    mean: float
    std: float

    def apply(self, rewards):
        """(r - mean) / std, elementwise; numpy arrays, floats and torch tensors alike."""
        return (rewards - self.mean) / self.std


def save_reward_norm(model_dir: str | Path, rewards: np.ndarray, **provenance) -> RewardNorm:
    r = np.asarray(rewards, dtype=float)
    std = float(r.std())
    if not np.isfinite(std) or std <= 0:
        raise PrefdataError(f"cannot whiten: the {r.size} training rewards have standard deviation {std}")
    norm = RewardNorm(float(r.mean()), std)
    out = Path(model_dir) / FILE
    out.write_text(json.dumps({"mean": norm.mean, "std": norm.std, "texts": int(r.size),
                               "method": "whiten: (r - mean) / std over the training answers (Llama 2)",
                               **provenance}, indent=2))
    return norm


def load_reward_norm(model_dir: str | Path) -> RewardNorm | None:
    """The model's whitening, or None when it was trained without (no reward_norm.json)."""
    p = Path(model_dir) / FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        norm = RewardNorm(float(d["mean"]), float(d["std"]))
    except (ValueError, KeyError, TypeError) as e:
        raise PrefdataError(f"{p}: not a reward normalisation file ({e.__class__.__name__}: {e})") from None
    if not (np.isfinite(norm.mean) and np.isfinite(norm.std) and norm.std > 0):
        raise PrefdataError(f"{p}: mean {norm.mean} and std {norm.std} must be finite, std > 0")
    return norm


def apply_reward_norm(model_dir: str | Path, rewards):
    norm = load_reward_norm(model_dir)
    return rewards if norm is None else norm.apply(rewards)
