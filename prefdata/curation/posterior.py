"""How likely is each pair's label to be right? A latent-class model over voter families.

The setting is crowdsourcing (Dawid and Skene 1979): several imperfect annotators, no gold labels.
The annotators here are the dataset's own label and one vote per voter *family* (a backbone's heads,
a reward model, an LLM judge under several prompts and both orders, a human annotator). Members of
one family are not independent annotators (they share a model, a prompt style or a person), so they
arrive here already averaged into one family vote (`vote.combine`); their correlation is what the
average absorbs, and the family then counts once.

Model, written in the label's orientation (a positive vote supports the stored label):
- a latent y_i = 1 when the stored label is right, 0 when it is wrong; P(y_i = 1) = alpha;
- every family is symmetric: its vote about a pair whose label is wrong is distributed like its vote
  about a right one, negated. This is exact whenever the noise does not depend on which side was
  stored as chosen (voters never see that side), and halves the parameters, which matters on the
  few dozen pairs of a hard subset;
- a *score* family (reward-model margin, heads, log-prob) is Gaussian: N(+mu_f, sigma_f^2) when the
  label is right, N(-mu_f, sigma_f^2) when wrong; its log-likelihood ratio is (2 mu_f / sigma_f^2) s;
- a *verdict* family (judges, annotators: +1, -1, 0 for a tie, averaged over its members into
  [-1, 1]) is categorical over seven bins: a tie, and weak / clear / strong agreement on either side
  (|v| in (0, 1/3], (1/3, 2/3], (2/3, 1]). Bin k has probability theta_f[k] when the label is right
  and theta_f[-k] when it is wrong, so its log-likelihood ratio is log theta_f[k] - log theta_f[-k]:
  a tie carries none, and a family that is reliably wrong gets negative ratios (it is read backwards,
  not clipped to zero). theta has a symmetric Dirichlet prior of `VERDICT_PRIOR` pseudo-pairs per bin,
  which keeps a family seen on 50 pairs from claiming certainty;
- a missing vote (NaN) contributes nothing: it is marginalised, never counted as wrong;
- families are conditionally independent given y_i.

The posterior log-odds that the label is right is logit(alpha) plus the families' summed ratios.
EM fits everything without gold. It starts from "the stored label is right with probability alpha0",
so each family's first direction is its agreement with the labels; alpha is kept in [0.5, 0.999], the
stored labels being assumed better than a coin: that fixes the model's one symmetry (relabel every
pair and read every family backwards).

Honest uncertainty (see `interval`):
- the noise rate's interval resamples pairs, refits EM, and draws the wrong labels from each refit's
  posterior, so it holds both the parameters' uncertainty and the labels' own;
- `separation` is the model's own ROC-AUC between right and wrong labels (each pair weighted by its
  posterior). Near 0.5 the families cannot tell the classes apart, every posterior is about the
  prior, and no label can be judged (`JUDGE_MIN_SEPARATION`).

A small gold set (pairs whose label is verified right or wrong) recalibrates the log-odds by Platt
scaling; `calibration_error` is the expected calibration error (ECE) on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCORE, VERDICT = "score", "verdict"
VERDICT_EDGES = (1 / 3, 2 / 3)  # |v| bin edges above 0 (a tie is exactly 0)
VERDICT_PRIOR = 2.0  # Dirichlet pseudo-pairs per bin (measured on the LLMBar dev panels, RESULTS.md)
JUDGE_MIN_SEPARATION = 0.75  # below this model-implied AUC the voters cannot judge single labels (HH + SmolLM2 heads: 0.67; LLMBar Base_9: >= 0.82)

ALPHA_MAX = 0.999
MAX_NOISE = 0.4  # a posterior noise rate above this contradicts the anchor (labels beat a coin): not judged
ALPHA_GRID = np.r_[np.linspace(0.5, 0.95, 19), 0.97, 0.985, 0.995]  # label accuracies the profile visits
_BINS = 2 * (len(VERDICT_EDGES) + 1) + 1  # 7: -3 .. +3


def below(separation: float) -> str:
    """An AUC under the cut, in two decimals rounded down: 0.7496 reads 0.74, never the 0.75 it missed."""
    return f"{np.floor(separation * 100) / 100:.2f}"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def verdict_bins(v: np.ndarray) -> np.ndarray:
    """Signed bin index of each verdict value in [-1, 1] (0 = tie), -99 where missing."""
    a = np.abs(v)
    k = 1 + np.searchsorted(np.asarray(VERDICT_EDGES), np.nan_to_num(a), side="left")
    k = np.where(a == 0, 0, k) * np.sign(np.nan_to_num(v))
    return np.where(np.isfinite(v), k, -99).astype(np.int64)


@dataclass
class _Panel:
    """The votes as the EM reads them: (n, F) in label orientation, NaN where a family did not vote."""

    s: np.ndarray
    verdict: np.ndarray  # (F,) bool: categorical family
    obs: np.ndarray  # (n, F) bool
    cell: np.ndarray  # (n, V) index v * 7 + (bin + 3) of each verdict family's vote, -1 where missing
    mcell: np.ndarray  # (n, V) the same with bin k replaced by -k (a wrong label's view of the vote)

    @classmethod
    def of(cls, votes: np.ndarray, kinds: list[str]) -> "_Panel":
        s = np.asarray(votes, dtype=np.float64)
        verdict = np.array([k == VERDICT for k in kinds], dtype=bool)
        b = verdict_bins(s[:, verdict])  # (n, V)
        cell = np.where(b == -99, -1, np.arange(b.shape[1])[None, :] * _BINS + b + _BINS // 2)
        v, k = np.divmod(cell, _BINS)
        return cls(s=s, verdict=verdict, obs=np.isfinite(s), cell=cell,
                   mcell=np.where(cell < 0, -1, v * _BINS + (_BINS - 1 - k)))

    def take(self, idx: np.ndarray) -> "_Panel":
        return _Panel(s=self.s[idx], verdict=self.verdict, obs=self.obs[idx], cell=self.cell[idx], mcell=self.mcell[idx])

    def gather(self, table: np.ndarray, cell: np.ndarray | None = None) -> np.ndarray:
        """(n, V) table[v, bin] for each verdict vote, 0 where missing."""
        cell = self.cell if cell is None else cell
        flat = np.r_[table.reshape(-1), 0.0]
        return flat[np.where(cell < 0, flat.size - 1, cell)]


@dataclass
class _Params:
    alpha: float
    mu: np.ndarray  # (F,) score families (0 for verdict ones)
    sigma: np.ndarray  # (F,)
    theta: np.ndarray  # (V, 7) bin probabilities when the label is right


def _mstep(p: _Panel, q: np.ndarray, fixed_alpha: float | None = None) -> _Params:
    F = p.s.shape[1]
    mu, sigma = np.zeros(F), np.ones(F)
    sc = ~p.verdict
    if sc.any():
        s0 = np.where(p.obs[:, sc], p.s[:, sc], 0.0)
        nobs = np.maximum(p.obs[:, sc].sum(0), 1)
        m = ((2 * q - 1)[:, None] * s0).sum(0) / nobs
        mu[sc] = m
        sigma[sc] = np.sqrt(np.maximum((s0 ** 2).sum(0) / nobs - m ** 2, 1e-6))
    # A right label's bin k is a wrong label's bin -k: pool both into one count per bin.
    V = p.cell.shape[1]
    size = V * _BINS
    if V:
        seen = p.cell >= 0
        w1 = np.broadcast_to(q[:, None], p.cell.shape)[seen]
        cnt = (np.bincount(p.cell[seen], weights=w1, minlength=size)
               + np.bincount(p.mcell[seen], weights=1 - w1, minlength=size)).reshape(V, _BINS) + VERDICT_PRIOR
    else:
        cnt = np.ones((0, _BINS))
    theta = cnt / cnt.sum(1, keepdims=True)
    alpha = float(np.clip(q.mean(), 0.5, ALPHA_MAX)) if fixed_alpha is None else fixed_alpha
    return _Params(alpha=alpha, mu=mu, sigma=sigma, theta=theta)


def _contrib(p: _Panel, par: _Params) -> np.ndarray:
    """(n, F) each family's log-likelihood ratio (label right vs wrong) for each pair; 0 if it did not vote."""
    out = np.where(p.obs, p.s, 0.0) * (2 * par.mu / par.sigma ** 2)[None, :]
    if p.verdict.any():
        llr = np.log(par.theta) - np.log(par.theta[:, ::-1])  # (V, 7)
        out[:, p.verdict] = p.gather(llr)
    return out


def _em(p: _Panel, alpha0: float, iters: int, tol: float, q: np.ndarray | None = None,
        fixed_alpha: float | None = None):
    """EM from q (default: every label right with probability alpha0). With `fixed_alpha` the label's
    accuracy is held there and only the families are fitted (one point of the profile likelihood)."""
    q = np.full(p.s.shape[0], alpha0 if fixed_alpha is None else fixed_alpha) if q is None else q
    it = 0
    for it in range(1, iters + 1):
        par = _mstep(p, q, fixed_alpha)
        contrib = _contrib(p, par)
        q_new = _sigmoid(_logit(par.alpha) + contrib.sum(1))
        done = np.max(np.abs(q_new - q), initial=0.0) < tol
        q = q_new
        if done:
            break
    par = _mstep(p, q, fixed_alpha)
    return par, _contrib(p, par), it


def separation(q: np.ndarray, log_odds: np.ndarray) -> float:
    """The model's own ROC-AUC between right and wrong labels: P(log-odds of a right label > that of a
    wrong one), each pair counted as right with weight q and wrong with weight 1 - q (ties half)."""
    q = np.asarray(q, float)
    if q.size == 0 or q.sum() <= 0 or (1 - q).sum() <= 0:
        return 0.5
    vals, inv = np.unique(np.round(log_odds, 9), return_inverse=True)
    right = np.bincount(inv, weights=q, minlength=vals.size)
    wrong = np.bincount(inv, weights=1 - q, minlength=vals.size)
    below = np.cumsum(wrong) - wrong  # wrong weight strictly below each value
    return float((right * (below + 0.5 * wrong)).sum() / (right.sum() * wrong.sum()))


@dataclass
class Posterior:
    label_prob: np.ndarray  # (n,) P(stored label is right | label, votes)
    log_odds: np.ndarray  # (n,) logit of label_prob
    evidence: np.ndarray  # (n,) sum over families of their log-likelihood ratios (log_odds minus the prior)
    alpha: float  # estimated accuracy of the stored labels
    mu: np.ndarray  # (F,) score family: mean vote when the label is right (0 for verdict families)
    sigma: np.ndarray  # (F,)
    families: list[str]
    iterations: int
    kinds: list[str] = field(default_factory=list)
    theta: np.ndarray | None = None  # (V, 7) verdict families' bin probabilities when the label is right
    contrib: np.ndarray | None = None  # (n, F) each family's log-likelihood ratio per pair
    voted: np.ndarray | None = None  # (F,) share of pairs each family voted on
    ties: np.ndarray | None = None  # (F,) share of its votes that were ties
    calibration: tuple[float, float] | None = None  # Platt (a, b) when a gold set was given
    extra: dict = field(default_factory=dict)
    judged: np.ndarray | None = None  # (n,) bool per pair when fitted by group (`fit_groups`); None: one fit

    def _verdict_index(self) -> dict[int, int]:
        idx = [f for f, k in enumerate(self.kinds) if k == VERDICT]
        return {f: v for v, f in enumerate(idx)}

    @property
    def family_accuracy(self) -> dict[str, float]:
        """P(a family's vote points to the better answer | it voted and did not tie)."""
        from math import erf, sqrt

        vi = self._verdict_index()
        out = {}
        for f, name in enumerate(self.families):
            if f in vi:
                th = self.theta[vi[f]]
                out[name] = float(th[4:].sum() / max(th[4:].sum() + th[:3].sum(), 1e-12))
            else:
                out[name] = float(0.5 * (1 + erf(self.mu[f] / self.sigma[f] / sqrt(2))))
        return out

    @property
    def weights(self) -> dict[str, float]:
        """Log-odds a family adds for a full vote for the stored label: 2 mu / sigma^2 per unit of a
        score family's vote; log theta[+3] - log theta[-3] for a unanimous verdict; both divided by the
        families' design effect, as the posterior uses them. Negative: read backwards."""
        vi = self._verdict_index()
        d = float(self.extra.get("design_effect", 1.0))
        return {name: float(np.log(self.theta[vi[f], -1] / self.theta[vi[f], 0]) if f in vi
                            else 2 * self.mu[f] / self.sigma[f] ** 2) / d for f, name in enumerate(self.families)}

    @property
    def noise_rate(self) -> float:
        return float(1.0 - self.label_prob.mean())

    @property
    def separation(self) -> float:
        return separation(self.label_prob, self.log_odds)

    @property
    def can_judge(self) -> bool:
        return self.judge_problem is None

    @property
    def judge_problem(self) -> str | None:
        """Why these voters cannot judge single labels ("near chance", "against the labels"), or None.
        Fitted by group, the answer is None when at least one group can be judged (`judged` says which pairs)."""
        if self.judged is not None:
            if self.judged.any():
                return None
            problems = [g["problem"] for g in self.extra.get("groups", {}).values() if g.get("problem")]
            return max(set(problems), key=problems.count) if problems else "near chance"
        live = [k for f, k in enumerate(self.kinds) if self.voted is not None and self.voted[f] > 0
                and self.families[f] not in self.extra.get("constant_families", ())]
        if len(live) == 1 and live[0] == VERDICT:
            # The stored label and one categorical family are two annotators: how right the labels are
            # and how right the family is cannot be told apart (Dawid-Skene needs three).
            return "one family"
        if self.separation < JUDGE_MIN_SEPARATION:
            return "near chance"
        if self.noise_rate > MAX_NOISE:
            # The model's one anchor is that the stored labels beat a coin. Families that overrule most
            # labels more likely share a bias (the pairs were built to fool judges) than found a
            # dataset that is mostly wrong; flipping the majority of a dataset is never done silently.
            return "against the labels"
        return None


def _kinds(kinds, F: int) -> list[str]:
    kinds = list(kinds) if kinds is not None else [SCORE] * F
    if len(kinds) != F or any(k not in (SCORE, VERDICT) for k in kinds):
        raise ValueError(f"kinds must be {F} of {SCORE!r}/{VERDICT!r}, got {kinds}")
    return kinds


def _draws(rng, weights: np.ndarray, mean: np.ndarray, sd: np.ndarray, size: int = 4000) -> np.ndarray:
    """Samples of a mixture of normals (one component per profile point)."""
    comp = rng.choice(weights.size, size=size, p=weights)
    return rng.normal(mean[comp], sd[comp])


def fit(votes: np.ndarray, families: list[str] | None = None, *, kinds: list[str] | None = None,
        alpha0: float = 0.8, iters: int = 500, tol: float = 1e-7, gold: np.ndarray | None = None,
        level: float = 0.9, seed: int = 0) -> Posterior:
    """Fit the model to an (n, F) matrix of family votes in label orientation (NaN: no vote).

    `kinds`: per family "score" (continuous, the default) or "verdict" (in [-1, 1], ties 0).
    `gold` (optional, (n,) floats): 1 where the stored label is verified right, 0 where verified wrong,
    NaN where unknown. With at least 10 verified pairs of both kinds it calibrates the log-odds.

    The label accuracy alpha is integrated out rather than set to its maximum-likelihood value: the
    families are refitted at each alpha of `ALPHA_GRID` (warm-started from the free fit), each point
    weighted by its likelihood (a flat prior on [0.5, 1]). When the families are weak the likelihood is
    flat in alpha, and a free fit runs to a boundary (every label right); the average does not, and the
    noise rate's interval then spans what the data cannot rule out. `extra["noise_interval"]` (at
    `level`) holds both that uncertainty and the binomial spread of which labels are wrong;
    `extra["accuracy_interval"]` gives each family's accuracy interval the same way."""
    s = np.asarray(votes, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    families = list(families or [f"family{i}" for i in range(s.shape[1])])
    kinds = _kinds(kinds, s.shape[1])
    obs0 = np.isfinite(s)
    voted = obs0.mean(0)
    ties = np.where(obs0.sum(0) > 0, ((s == 0) & obs0).sum(0) / np.maximum(obs0.sum(0), 1), 0.0)
    s, constant = _drop_constant(s, obs0, families)
    p = _Panel.of(s, kinds)
    free, c0, it = _em(p, alpha0, iters, tol)
    q0 = _sigmoid(_logit(free.alpha) + c0.sum(1))
    deff = _design_effect(p, q0)
    grid, fits, w = _alpha_profile(p, free, q0, alpha0, iters)
    avg = _average(p, kinds, fits, w, deff)
    label_prob = np.clip(avg["label_prob"], 1e-12, 1 - 1e-12)
    log_odds = np.log(label_prob) - np.log1p(-label_prob)
    post = Posterior(label_prob=label_prob, log_odds=log_odds, evidence=avg["contrib"].sum(1),
                     alpha=float(w @ grid), mu=avg["mu"], sigma=avg["sigma"], families=families, iterations=it,
                     kinds=kinds, theta=avg["theta"], contrib=avg["contrib"], voted=voted, ties=ties)
    nontie = (p.obs & (s != 0)).sum(0).astype(float)
    _intervals(post, w, avg, nontie, level, np.random.default_rng(seed))
    post.extra["design_effect"] = round(deff, 4)
    if constant:
        post.extra["constant_families"] = constant
    post.extra["alpha_profile"] = {"grid": [round(float(x), 4) for x in grid], "weight": [round(float(x), 4) for x in w]}
    if gold is not None:
        calibrate(post, np.asarray(gold, dtype=np.float64))
    return post


def _drop_constant(s: np.ndarray, obs0: np.ndarray, families: list[str]) -> tuple[np.ndarray, list[str]]:
    """A family that gives every pair the same vote (a judge that always names the stored chosen side, a
    constant score) says nothing about which labels are wrong; fitted, it would look perfect and drag
    alpha to 1. Its votes become missing, and it is named."""
    with np.errstate(invalid="ignore"):
        spread = np.array([np.ptp(s[obs0[:, f], f]) if obs0[:, f].any() else 0.0 for f in range(s.shape[1])])
    constant = [families[f] for f in range(s.shape[1]) if obs0[:, f].any() and spread[f] < 1e-12]
    if constant:
        s = np.where((spread < 1e-12)[None, :], np.nan, s)
    return s, constant


def _alpha_profile(p: _Panel, free: _Params, q0: np.ndarray, alpha0: float, iters: int):
    """Refit the families at each label accuracy of ALPHA_GRID (and the free fit's), walking out from the
    free fit both ways until the likelihood is negligible (< e^-15 of the best): (grid, fits, weights)."""
    full = np.unique(np.r_[ALPHA_GRID, free.alpha])
    start = int(np.argmin(np.abs(full - free.alpha)))
    done: dict[int, tuple[_Params, float]] = {}
    for step in (1, -1):
        i = start if step == 1 else start - 1
        while 0 <= i < full.size:
            par, _, _ = _em(p, alpha0, min(iters, 200), 1e-5, q=q0, fixed_alpha=float(full[i]))
            done[i] = (par, _loglik(p, par))
            if done[i][1] < max(v[1] for v in done.values()) - 15:
                break
            i += step
    keys = sorted(done)
    ll = np.asarray([done[k][1] for k in keys])
    w = np.exp(ll - ll.max())
    return full[keys], [done[k][0] for k in keys], w / w.sum()


def _average(p: _Panel, kinds: list[str], fits: list[_Params], w: np.ndarray, deff: float) -> dict:
    """The profile's fits averaged by weight (label_prob, contributions, family parameters), with each
    fit's noise-rate mean and spread and family accuracies kept for the intervals."""
    n, F = p.obs.shape
    out = {"label_prob": np.zeros(n), "contrib": np.zeros((n, F)), "mu": np.zeros(F), "sigma": np.zeros(F),
           "theta": np.zeros_like(fits[0].theta), "means": [], "sds": [], "accs": []}
    for wa, par in zip(w, fits):
        c = _contrib(p, par) / deff
        q = _sigmoid(_logit(par.alpha) + c.sum(1))
        out["means"].append(float((1 - q).mean()))
        out["sds"].append(float(np.sqrt((q * (1 - q)).sum()) / max(n, 1)))
        out["accs"].append(_accuracy(kinds, par))
        if wa < 1e-12:
            continue
        out["label_prob"] += wa * q
        out["contrib"] += wa * c
        for key in ("mu", "sigma", "theta"):
            out[key] += wa * getattr(par, key)
    return out


def _intervals(post: Posterior, w: np.ndarray, avg: dict, nontie: np.ndarray, level: float,
               rng: np.random.Generator) -> None:
    """extra["noise_interval"] and extra["accuracy_interval"]: the alpha profile's uncertainty mixed
    with the binomial spread (of which labels are wrong; of each family's non-tie votes)."""
    qs = [(1 - level) / 2, 1 - (1 - level) / 2]
    noise = np.clip(_draws(rng, w, np.asarray(avg["means"]), np.asarray(avg["sds"])), 0, 1)
    post.extra["noise_interval"] = tuple(float(x) for x in np.quantile(noise, qs))
    accs = np.asarray(avg["accs"])  # (grid, F)
    acc_iv = []
    for f in range(accs.shape[1]):
        comp = rng.choice(w.size, size=4000, p=w)
        a = accs[comp, f]
        k = max(nontie[f], 1.0)
        acc_iv.append(tuple(float(x) for x in np.quantile(rng.beta(a * k + 1, (1 - a) * k + 1), qs)))
    post.extra["accuracy_interval"] = acc_iv


MIN_GROUP = 30  # pairs; smaller groups are fitted together as one


def fit_groups(votes: np.ndarray, groups, families: list[str] | None = None, *, kinds: list[str] | None = None,
               gold: np.ndarray | None = None, level: float = 0.9, seed: int = 0) -> Posterior:
    """One latent-class fit per group (a source, a task type, a subset), so that a family can be
    reliable on one group and reliably wrong on another. Groups under `MIN_GROUP` pairs are fitted
    together. Each group is judged on its own (`judged` per pair); family figures at the top level are
    those of a pooled fit, and each group's own are in `extra["groups"]`. The overall noise interval
    adds the groups' intervals as independent normals (their half-widths in quadrature)."""
    s = np.asarray(votes, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    n, F = s.shape
    g = np.asarray([str(x) for x in groups], dtype=object) if not isinstance(groups, np.ndarray) else groups.astype(str)
    if g.shape[0] != n:
        raise ValueError(f"{g.shape[0]} group labels for {n} pairs")
    names, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    small = f"(groups under {MIN_GROUP} pairs)"
    key = np.where(counts[inv] < MIN_GROUP, small, g)
    pooled = fit(s, families, kinds=kinds, level=level, seed=seed)
    label_prob, contrib, judged = np.empty(n), np.zeros((n, F)), np.zeros(n, bool)
    per, mean, var = {}, 0.0, 0.0
    z = 1.6448536269514722 if level == 0.9 else float(np.sqrt(2) * _erfinv(level))
    for name in sorted(set(key.tolist())):
        idx = np.flatnonzero(key == name)
        post = fit(s[idx], pooled.families, kinds=pooled.kinds, level=level, seed=seed)
        label_prob[idx] = post.label_prob
        contrib[idx] = post.contrib
        judged[idx] = post.can_judge
        lo, hi = post.extra["noise_interval"]
        mean += post.noise_rate * idx.size
        var += ((hi - lo) * idx.size / (2 * z)) ** 2
        acc, w = post.family_accuracy, post.weights
        per[name] = {"pairs": int(idx.size), "noise_rate": round(post.noise_rate, 4),
                     "noise_interval": [round(lo, 4), round(hi, 4)], "separation": round(post.separation, 4),
                     "can_judge": post.can_judge, "problem": post.judge_problem,
                     "families": {f: {"accuracy": round(acc[f], 4), "weight": round(w[f], 4)} for f in pooled.families}}
    label_prob = np.clip(label_prob, 1e-12, 1 - 1e-12)
    out = Posterior(label_prob=label_prob, log_odds=np.log(label_prob) - np.log1p(-label_prob),
                    evidence=contrib.sum(1), alpha=float(np.mean(label_prob)), mu=pooled.mu, sigma=pooled.sigma,
                    families=pooled.families, iterations=pooled.iterations, kinds=pooled.kinds, theta=pooled.theta,
                    contrib=contrib, voted=pooled.voted, ties=pooled.ties, judged=judged)
    sd = np.sqrt(var) / n
    m = mean / n
    out.extra["noise_interval"] = (float(max(m - z * sd, 0.0)), float(min(m + z * sd, 1.0)))
    out.extra["accuracy_interval"] = pooled.extra["accuracy_interval"]
    out.extra["groups"] = per
    if gold is not None:
        calibrate(out, np.asarray(gold, dtype=np.float64))
    return out


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(y))


def _design_effect(p: _Panel, q: np.ndarray) -> float:
    """1 + (F - 1) * mean residual correlation of the families' votes given the latent class, >= 1.

    Families that err together are not F independent witnesses. Their summed log-likelihood ratio is
    divided by this factor after the fit, the magnitude adjustment of a composite likelihood (Varin,
    Reid and Firth 2011): rankings are unchanged, confidence is not overstated."""
    F = p.s.shape[1]
    if F < 2:
        return 1.0
    s0 = np.where(p.obs, p.s, 0.0)
    nobs = np.maximum(p.obs.sum(0), 1)
    m = ((2 * q - 1)[:, None] * s0).sum(0) / nobs
    r1 = np.where(p.obs, s0 - m, 0.0)
    r0 = np.where(p.obs, s0 + m, 0.0)
    cov = (r1 * q[:, None]).T @ r1 + (r0 * (1 - q)[:, None]).T @ r0
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    corr = cov / np.outer(sd, sd)
    rho = (corr.sum() - np.trace(corr)) / (F * (F - 1))
    return float(1.0 + (F - 1) * max(rho, 0.0))


def _accuracy(kinds: list[str], par: _Params) -> np.ndarray:
    """(F,) P(a family's vote points to the better answer | it voted and did not tie)."""
    from math import erf, sqrt

    out, v = np.zeros(len(kinds)), 0
    for f, k in enumerate(kinds):
        if k == VERDICT:
            th = par.theta[v]
            out[f] = th[4:].sum() / max(th[4:].sum() + th[:3].sum(), 1e-12)
            v += 1
        else:
            out[f] = 0.5 * (1 + erf(par.mu[f] / par.sigma[f] / sqrt(2)))
    return out


def interval(votes: np.ndarray, kinds: list[str] | None = None, *, level: float = 0.9, seed: int = 0,
             alpha0: float = 0.8) -> dict:
    """The noise rate's and each family's accuracy interval at `level` (see `fit`)."""
    post = fit(votes, kinds=kinds, alpha0=alpha0, level=level, seed=seed)
    return {"noise": post.extra["noise_interval"], "accuracy": post.extra["accuracy_interval"]}


def noise_interval(votes: np.ndarray, *, rounds: int | None = None, seed: int = 0, level: float = 0.9,
                   alpha0: float = 0.8, kinds: list[str] | None = None) -> tuple[float, float]:
    """Interval (90% by default) of the noise rate of these pairs: see `fit`. `rounds` is accepted for
    older callers (the interval no longer bootstraps)."""
    return interval(votes, kinds, level=level, seed=seed, alpha0=alpha0)["noise"]


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


def _loglik(p: _Panel, par: _Params) -> float:
    """Marginal log-likelihood of the votes (the label's prior included), summed over pairs."""
    right = np.zeros(p.s.shape[0])
    sc = ~p.verdict
    if sc.any():
        s0 = np.where(p.obs[:, sc], p.s[:, sc], 0.0)
        z = lambda m: np.where(p.obs[:, sc], -0.5 * ((s0 - m) / par.sigma[sc]) ** 2 - np.log(par.sigma[sc]), 0.0)
        right += z(par.mu[sc]).sum(1)
        wrong = z(-par.mu[sc]).sum(1)
    else:
        wrong = np.zeros_like(right)
    if p.verdict.any():
        lt = np.log(par.theta)
        right = right + p.gather(lt).sum(1)
        wrong = wrong + p.gather(lt[:, ::-1]).sum(1)
    return float(np.logaddexp(np.log(par.alpha) + right, np.log1p(-par.alpha) + wrong).sum())
