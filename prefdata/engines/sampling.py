"""Batched next-token sampling with per-row counter-based randomness, for the transformers engine.

Each row's uniform at decode step t is a pure function of (row seed, t): SplitMix64 (Steele, Lea and
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) evaluated at counter t of a
stream keyed by the mixed row seed. All rows are drawn in one vectorised op, and a row's draws never
depend on its neighbours, on batch order or on how many steps other rows run. A token is then picked
by inverse-CDF with that one uniform, so sampling costs one uniform per row and step.

Nucleus (top-p) sampling (Holtzman et al., "The Curious Case of Neural Text Degeneration", ICLR 2020)
is exact without a full-vocabulary sort: `torch.topk` takes the `top_k` largest logits, and a row
whose nucleus ends inside them samples from them alone; only rows whose nucleus may reach past the
k-th candidate fall back to the full sort. Both paths compute the probabilities, the keep mask and the
cumulative sums the same way, so they pick the same token for the same uniform.
"""

from __future__ import annotations

import numpy as np
import torch

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # the golden-ratio increment of SplitMix64
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
TOP_K_PREFILTER = 64  # candidates before the top-p cut; exact for any value, larger = fewer fallbacks


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (numpy's unsigned arithmetic wraps mod 2^64, by definition)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_keys(seeds: list[int]) -> np.ndarray:
    """The per-row stream keys: the mixed 64-bit seeds, (b,) uint64."""
    return _mix64(np.asarray([s & (2**64 - 1) for s in seeds], dtype=np.uint64))


def uniforms(keys: np.ndarray, step) -> torch.Tensor:
    """One uniform in [0, 1) per row for decode step `step` (one int for all rows, or each row's own
    step as a (b,) integer array): (b,) float64, 53 random bits each."""
    counter = np.broadcast_to(np.asarray(step).astype(np.uint64) + np.uint64(1), keys.shape)
    z = _mix64(keys + counter * _GAMMA)  # uint64 arrays wrap mod 2^64 without warnings
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)


def _pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row, the first column whose cumulative probability exceeds u x the row's total.

    probs (b, k) float32, zero where excluded; u (b,) float64. Returns (b,) column indices."""
    cdf = probs.double().cumsum(-1)  # (b, k)
    x = (u * cdf[:, -1]).unsqueeze(-1)  # (b, 1), strictly below the total since u < 1
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _nucleus(z_sorted: torch.Tensor, lse: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities of descending-sorted scaled logits, zeroed past the top-p nucleus, and whether the
    last column was kept. z_sorted (b, k), lse (b, 1) over the full vocabulary."""
    p = torch.exp(z_sorted - lse)  # (b, k), normalised over the whole vocabulary
    keep = p.cumsum(-1) - p < top_p  # always keeps the top token
    return p * keep, keep[:, -1]


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float,
           top_k: int = TOP_K_PREFILTER) -> torch.Tensor:
    """Next tokens (b,) from logits (b, vocab) float32 and per-row uniforms u (b,) float64.

    temperature <= 0 is greedy (argmax, u unused). top_p < 1 samples from the nucleus, exactly."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    z = logits / temperature  # (b, vocab)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (b, 1)
    if top_p >= 1.0:  # no truncation: inverse CDF over the vocabulary in index order, no sort needed
        return _pick(torch.exp(z - lse), u)
    k = min(top_k, z.shape[-1])
    z_top, idx = z.topk(k, dim=-1)  # (b, k), sorted descending
    p_top, spills = _nucleus(z_top, lse, top_p)
    out = idx.gather(-1, _pick(p_top, u).unsqueeze(-1)).squeeze(-1)
    if k < z.shape[-1] and bool(spills.any()):
        # The k-th candidate is still inside the nucleus, so it may reach further: full sort, those rows only.
        rows = spills.nonzero().squeeze(-1)
        z_all, idx_all = z[rows].sort(dim=-1, descending=True)
        p_all, _ = _nucleus(z_all, lse[rows], top_p)
        out[rows] = idx_all.gather(-1, _pick(p_all, u[rows]).unsqueeze(-1)).squeeze(-1)
    return out

