"""Small statistics shared by the evals: a fractional logistic regression and percentile bootstraps.

numpy only: the fits are tiny (one row per prompt) and must run anywhere the CLI does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def logistic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, ridge: float = 1.0,
                 iters: int = 50) -> tuple[float, float]:
    """(b0, b1) maximising sum w [y log s(b0 + b1 x) + (1 - y) log s(-(b0 + b1 x))] - ridge/2 * b1^2.

    y may be fractional (a tie is 0.5). Only the slope is penalised: when the outcome is separable in
    x (a judge that always picks the longer answer) the unpenalised slope runs off to infinity, while
    the intercept, the quantity reported, must stay free. Newton's method; the problem is convex."""
    w = np.ones_like(x) if w is None else w
    b = np.zeros(2)
    X = np.stack([np.ones_like(x), x], axis=1)
    pen = np.array([0.0, ridge])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ b)))
        grad = X.T @ (w * (y - p)) - pen * b
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(pen) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        b = b + step
        if np.abs(step).max() < 1e-10:
            break
    return float(b[0]), float(b[1])


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bootstrap_interval(n: int, stat: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of stat(indices) over n_boot resamples of range(n) with replacement."""
    if n == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.nanpercentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
