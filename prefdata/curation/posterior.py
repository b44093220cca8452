"""How likely is each pair's label to be right? A latent-class model over voter families.

The setting is crowdsourcing (Dawid and Skene 1979): several imperfect annotators, no gold labels.
The annotators here are the dataset's own label and one vote per voter *family* (a backbone's heads,
a reward model, a judge). Heads of one family are not independent annotators, so they arrive here
already averaged into one vote (`vote.combine`).

Model, written in the label's orientation (a positive vote supports the stored label):
- a latent y_i = 1 when the stored label is right, 0 when it is wrong; the label itself is a one-coin
  annotator with accuracy alpha, so P(y_i = 1) = alpha before any vote is seen;
- family f's vote s_if given y_i is Gaussian, N(+mu_f, sigma_f^2) if the label is right and
  N(-mu_f, sigma_f^2) if it is wrong. The sign flip is exact for pairwise scorers: swapping the two
  answers negates r(a) - r(b). A continuous vote keeps how sure the family is, which the binary
  two-coin model would throw away;
- families are conditionally independent given y_i (the assumption that makes one vote per family,
  never one per head, necessary).

Then the posterior log-odds that the label is right is linear in the votes:

    log-odds_i = logit(alpha) + sum_f (2 mu_f / sigma_f^2) s_if

EM fits alpha, mu_f and sigma_f without gold: E-step q_i = sigmoid(log-odds_i); M-step
alpha = mean q, mu_f = mean((2q - 1) s_f), sigma_f^2 = mean(s_f^2) - mu_f^2. A family's accuracy is
Phi(mu_f / sigma_f): the chance its vote's sign matches the truth. alpha is kept in [0.5, 0.999]: the
stored label is assumed better than a coin, which fixes the model's one symmetry (relabelling every
pair). With uninformative families alpha stays near its start (0.8), and the bootstrap interval on the
noise rate is then wide, which is the honest answer.

A small gold set (pairs whose label is verified right or wrong) recalibrates the log-odds by Platt
scaling; `calibration_error` is the expected calibration error (ECE) on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


@dataclass
class Posterior:
    label_prob: np.ndarray  # (n,) P(stored label is right | label, votes)
    log_odds: np.ndarray  # (n,) logit of label_prob
    evidence: np.ndarray  # (n,) sum over families of their log-likelihood ratios (log_odds minus the prior)
    alpha: float  # estimated accuracy of the stored labels
    mu: np.ndarray  # (F,) family mean vote when the label is right
    sigma: np.ndarray  # (F,)
    families: list[str]
    iterations: int
    calibration: tuple[float, float] | None = None  # Platt (a, b) when a gold set was given
    extra: dict = field(default_factory=dict)

    @property
    def family_accuracy(self) -> dict[str, float]:
        from math import erf, sqrt

        return {f: float(0.5 * (1 + erf(m / s / sqrt(2)))) for f, m, s in zip(self.families, self.mu, self.sigma)}

    @property
    def weights(self) -> dict[str, float]:
        return {f: float(2 * m / s ** 2) for f, m, s in zip(self.families, self.mu, self.sigma)}

    @property
    def noise_rate(self) -> float:
        return float(1.0 - self.label_prob.mean())


def _em(s: np.ndarray, alpha0: float, iters: int, tol: float):
    n, _ = s.shape
    alpha = alpha0
    q = np.full(n, alpha0)
    mu = ((2 * q - 1)[:, None] * s).mean(0)
    sigma2 = np.maximum((s ** 2).mean(0) - mu ** 2, 1e-6)
    it = 0
    for it in range(1, iters + 1):
        evidence = s @ (2 * mu / sigma2)
        q = _sigmoid(_logit(alpha) + evidence)
        alpha_new = float(np.clip(q.mean(), 0.5, 0.999))
        mu_new = ((2 * q - 1)[:, None] * s).mean(0)
        sigma2 = np.maximum((s ** 2).mean(0) - mu_new ** 2, 1e-6)
        done = abs(alpha_new - alpha) < tol and np.max(np.abs(mu_new - mu)) < tol
        alpha, mu = alpha_new, mu_new
        if done:
            break
    evidence = s @ (2 * mu / sigma2)
    return alpha, mu, np.sqrt(sigma2), evidence, it


def fit(votes: np.ndarray, families: list[str] | None = None, *, alpha0: float = 0.8, iters: int = 500,
        tol: float = 1e-9, gold: np.ndarray | None = None) -> Posterior:
    """Fit the model to an (n, F) matrix of family votes in label orientation.

    `gold` (optional, (n,) floats): 1 where the stored label is verified right, 0 where verified wrong,
    NaN where unknown. With at least 10 verified pairs of both kinds it calibrates the log-odds."""
    s = np.asarray(votes, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    families = families or [f"family{i}" for i in range(s.shape[1])]
    alpha, mu, sigma, evidence, it = _em(s, alpha0, iters, tol)
    log_odds = _logit(alpha) + evidence
    post = Posterior(label_prob=_sigmoid(log_odds), log_odds=log_odds, evidence=evidence, alpha=alpha, mu=mu,
                     sigma=sigma, families=list(families), iterations=it)
    if gold is not None:
        calibrate(post, np.asarray(gold, dtype=np.float64))
    return post


def calibrate(post: Posterior, gold: np.ndarray) -> None:
    """Platt-scale the log-odds on the verified pairs (in place); record ECE before and after.

    The 'after' figure is cross-fitted (two halves, each scaled by a fit on the other), so it is not
    the error of a calibration measured on its own training pairs."""
    known = np.flatnonzero(np.isfinite(gold))
    y = gold[known]
    if known.size < 10 or y.min() == y.max():
        post.extra["gold"] = {"pairs": int(known.size), "note": "too few verified pairs of both kinds to calibrate"}
        return
    x = post.log_odds[known]
    before = ece(_sigmoid(x), y)
    rng = np.random.default_rng(0)
    half = rng.permutation(known.size) % 2
    cross = np.empty(known.size)
    for h in (0, 1):
        a, b = platt(x[half != h], y[half != h])
        cross[half == h] = _sigmoid(a * x[half == h] + b)
    a, b = platt(x, y)
    post.log_odds = a * post.log_odds + b
    post.label_prob = _sigmoid(post.log_odds)
    post.calibration = (a, b)
    post.extra["gold"] = {"pairs": int(known.size), "ece_before": round(before, 4),
                          "ece_after": round(ece(cross, y), 4), "platt_a": round(a, 4), "platt_b": round(b, 4),
                          "accuracy": round(float(((post.label_prob[known] >= 0.5) == (y == 1)).mean()), 4)}


def platt(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 100) -> tuple[float, float]:
    """Logistic regression of y on x (slope and intercept): Newton steps, halved until the lightly
    ridged log-loss goes down (a plain Newton step overshoots when x is large)."""
    X = np.stack([x, np.ones_like(x)], 1)

    def loss(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w)

    w = np.array([1.0, 0.0])
    cur = loss(w)
    for _ in range(iters):
        p = _sigmoid(X @ w)
        g = X.T @ (p - y) + l2 * w
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(2)
        step = np.linalg.solve(H, g)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > cur:
            t *= 0.5
        w = w - t * step
        new = loss(w)
        if cur - new < 1e-10:
            break
        cur = new
    return float(w[0]), float(w[1])


def ece(prob: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: mean |confidence - accuracy| over equal-width probability bins,
    weighted by how many pairs fall in each."""
    prob, y = np.asarray(prob, float), np.asarray(y, float)
    idx = np.clip((prob * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, weights=prob, minlength=bins)
    hits = np.bincount(idx, weights=y, minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(conf[used] - hits[used])) / max(prob.size, 1))


def noise_interval(votes: np.ndarray, *, rounds: int = 200, seed: int = 0, level: float = 0.9,
                   alpha0: float = 0.8) -> tuple[float, float]:
    """Bootstrap interval (pairs resampled with replacement, EM refitted) for the noise rate 1 - alpha."""
    s = np.asarray(votes, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(rounds):
        idx = rng.integers(0, s.shape[0], s.shape[0])
        alpha, *_ = _em(s[idx], alpha0, 200, 1e-7)
        rates.append(1.0 - alpha)
    lo, hi = np.quantile(rates, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
