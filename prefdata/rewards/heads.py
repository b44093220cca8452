"""K Bradley-Terry heads on one frozen backbone, cross-fitted (Secrets of RLHF II; ArmoRM-style heads).

The heads are the ensemble's members: each is trained on a bootstrap resample (its own seed) of
the pairs outside one fold and scores only that fold. Every pair is therefore scored by K heads
that never saw it, which is what makes a low score evidence of a wrong label rather than of a
head that memorised it. Features come from `features.py`, computed once per text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CrossFit:
    scores: np.ndarray  # (n_pairs, K) reward differences r(chosen) - r(rejected), held-out only
    fold_of: np.ndarray  # (n_pairs,) the fold each pair belongs to
    trained_on: list[list[np.ndarray]]  # [fold][head] -> indices of the pairs that head trained on


def _standardise(train: np.ndarray, *others: np.ndarray):
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(x - mu) / sd for x in (train, *others)]


def train_head(xc: np.ndarray, xr: np.ndarray, *, seed: int, kind: str = "linear", l2: float = 1e-2,
               hidden: int = 64, steps: int = 200, weights: np.ndarray | None = None):
    """Fit r(x) so that r(chosen) > r(rejected): loss = mean softplus(-(r(xc) - r(xr))) + l2 * |w|^2.

    Returns a function mapping features (n, d) to rewards (n,)."""
    import torch  # here: pair_groups and the card need no torch (a judge-only clean_labels run)

    torch.manual_seed(seed)
    c, r = torch.from_numpy(xc).float(), torch.from_numpy(xr).float()
    w8 = torch.ones(len(c)) if weights is None else torch.from_numpy(weights).float()
    d = c.shape[1]
    if kind == "linear":
        net = torch.nn.Linear(d, 1, bias=False)
    elif kind == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    else:
        raise ValueError(f"unknown head kind '{kind}' (linear, mlp)")

    def loss_fn():
        margin = (net(c) - net(r)).squeeze(-1)  # (n,)
        bt = (torch.nn.functional.softplus(-margin) * w8).sum() / w8.sum()
        return bt + l2 * sum((p ** 2).sum() for n_, p in net.named_parameters() if "weight" in n_)

    if kind == "linear":
        # Convex: full-batch L-BFGS converges in a few dozen iterations.
        opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()

    def reward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x).float()).squeeze(-1).numpy()

    return reward


def pair_groups(table) -> np.ndarray:
    """Group id per pair: pairs that share a prompt or an answer text are connected, transitively.

    Cross-fitting folds are drawn per group, so a duplicated (or swapped) pair, or two pairs with one
    answer in common, never sit on both sides of a fold: a head cannot score a text it trained on."""
    import polars as pl
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from prefdata.rewards.features import pair_texts

    keys = pair_texts(table)
    n = keys.height
    # Node ids: pairs 0..n-1, then one node per distinct prompt and per distinct answer text.
    prompts = keys["p"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    answers = pl.concat([keys["c"], keys["r"]]).cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    n_prompts = int(prompts.max()) + 1 if n else 0
    rows = np.concatenate([np.arange(n), np.arange(n), np.arange(n)])
    cols = np.concatenate([n + prompts, n + n_prompts + answers[:n], n + n_prompts + answers[n:]])
    size = n + n_prompts + (int(answers.max()) + 1 if n else 0)
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return labels[:n]


def group_folds(groups: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Assign whole groups to folds, in random order, filling folds to about n / folds pairs each."""
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(uniq.size)
    start = np.cumsum(sizes[order]) - sizes[order]  # pairs placed before each group, in random order
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    fold_of_group[order] = np.minimum((start * folds) // max(groups.size, 1), folds - 1)
    return fold_of_group[inverse]


def cross_fit(xc: np.ndarray, xr: np.ndarray, *, k: int = 10, folds: int = 5, seed: int = 0, kind: str = "linear",
              l2: float = 1e-2, steps: int = 200, bootstrap: bool = True, groups: np.ndarray | None = None) -> CrossFit:
    """Held-out reward differences from K bootstrap heads per fold; (n, K). With `groups`, each
    group of pairs falls in one fold (see `pair_groups`)."""
    n = xc.shape[0]
    if n < folds * 2:
        folds = max(2, n // 2)
    rng = np.random.default_rng(seed)
    if groups is None:
        fold_of = rng.permutation(np.arange(n) % folds)
    else:
        fold_of = group_folds(np.asarray(groups), folds, rng)
    scores = np.zeros((n, k), dtype=np.float64)
    trained_on: list[list[np.ndarray]] = []
    for f in range(folds):
        test = np.flatnonzero(fold_of == f)
        train = np.flatnonzero(fold_of != f)
        if test.size == 0:
            trained_on.append([])
            continue
        if train.size == 0:  # one group holds every pair: nothing to train on without leaking
            from prefdata.errors import PrefdataError

            raise PrefdataError("every pair shares a prompt or an answer with the others, so no cross-fitting "
                                "fold can be held out; the heads voter needs independent groups of pairs")
        # Standardise on training features only (both sides pooled) so no test statistic leaks.
        both = np.concatenate([xc[train], xr[train]])
        mu, sd = both.mean(0), both.std(0) + 1e-6
        zc, zr = (xc - mu) / sd, (xr - mu) / sd
        heads_idx = []
        for h in range(k):
            hrng = np.random.default_rng([seed, f, h])
            idx = hrng.choice(train, size=train.size, replace=True) if bootstrap else train
            heads_idx.append(np.unique(idx))
            head = train_head(zc[idx], zr[idx], seed=seed * 1000 + f * 100 + h, kind=kind, l2=l2, steps=steps)
            scores[test, h] = head(zc[test]) - head(zr[test])
        trained_on.append(heads_idx)
    return CrossFit(scores=scores, fold_of=fold_of, trained_on=trained_on)


def fit_reward(xc: np.ndarray, xr: np.ndarray, *, seed: int = 0, kind: str = "linear", l2: float = 1e-2,
               weights: np.ndarray | None = None):
    """One BT reward head on all given pairs (standardised inside); returns r(features)."""
    both = np.concatenate([xc, xr])
    mu, sd = both.mean(0), both.std(0) + 1e-6
    head = train_head((xc - mu) / sd, (xr - mu) / sd, seed=seed, kind=kind, l2=l2, weights=weights)
    return lambda x: head((x - mu) / sd)
