"""A fine-tuned reward model as a voter family, cross-fitted so no pair is scored by a model that saw it.

The pairs are cut into `folds` groups of whole connected components (pairs sharing a prompt or an
answer text stay together, see `heads.pair_groups`); for each fold a Bradley-Terry reward model is
LoRA-trained on the other folds through `trainers.reward.train` and scores the held-out fold with
d = r(chosen) - r(rejected). Unlike the heads family this one updates the backbone, so it can learn
what a frozen feature set cannot; it is also one model per fold, so it is a single family name.

`finetuned_heldout_accuracy` is the same training on one table scored on another: the fine-tuned
variant of the downstream comparison (noisy vs cleaned vs soft-labelled data).
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from prefdata.errors import PrefdataError


from prefdata.rewards.voters import FinetunedRMVoter  # the spec lives with the other voter specs


@dataclass
class FinetunedFit:
    """Held-out scores with the bookkeeping that proves them held out."""

    name: str  # the family name, ftrm:<model short name>
    scores: np.ndarray  # (n,) r(chosen) - r(rejected) from the model that did not train on the pair
    fold_of: np.ndarray  # (n,) fold of each pair
    trained_on: list[np.ndarray] = field(default_factory=list)  # per fold: row indices its model trained on


def family_name(spec: FinetunedRMVoter) -> str:
    # No ':<int>' tail: the vote reads "name:<int>" as one head of a multi-head family.
    return f"ftrm:{Path(spec.model.rstrip('/')).name or spec.model}"


def _train(table: pa.Table, spec: FinetunedRMVoter, seed: int, workdir: Path, soft: bool) -> Path:
    """One reward model on `table` through the public trainer; returns the merged model's directory."""
    import torch
    import transformers

    from prefdata import io
    from trainers.reward import RewardTrainConfig, train

    cols = ["prompt", "chosen", "rejected"] + (["label_prob"] if soft else [])
    data = io.write(table.select(cols), workdir / "train.parquet")  # train() reads a ref or a file, not a table
    out = workdir / "model"
    cfg = RewardTrainConfig(dataset=str(data), model=spec.model, output_dir=str(out), lora=spec.lora,
                            max_steps=spec.max_steps, learning_rate=spec.learning_rate, max_length=spec.max_length,
                            batch_size=spec.batch_size, seed=seed, trust_remote_code=spec.trust_remote_code,
                            eval_fraction=0.0,  # we score our own held-out fold
                            use_margin=False,  # margins come from the labels under test; keep the family independent
                            use_soft_labels=soft, logging_steps=10)
    # train() loads the model (and draws the new score head) before the Trainer seeds torch: seed it here.
    transformers.set_seed(seed)
    train(cfg)
    gc.collect()  # the trainer and its optimizer state are garbage now; free GPU memory before the next fold
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _score(table: pa.Table, model_dir: Path, spec: FinetunedRMVoter) -> np.ndarray:
    # The reward-model voter already batches by length and truncates from the left; reuse it.
    from prefdata.rewards.voters import RewardModelVoter, reward_model_votes

    rm = RewardModelVoter(model=str(model_dir), max_length=spec.max_length, batch_size=spec.batch_size,
                          trust_remote_code=spec.trust_remote_code)
    return next(iter(reward_model_votes(table, rm, progress=False).values()))


def _workdir():
    from prefdata.store import safe_path

    root = safe_path("cache", "finetuned-rm")
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=root, prefix="run-")  # removed, weights and all, on exit


def finetuned_cross_fit(table: pa.Table, spec: FinetunedRMVoter, seed: int = 0, progress: bool = True) -> FinetunedFit:
    """Held-out reward differences from one fine-tuned model per fold (see the module docstring)."""
    from prefdata.rewards.heads import group_folds, pair_groups

    seed = spec.seed if spec.seed is not None else seed
    n = table.num_rows
    rng = np.random.default_rng(seed)
    fold_of = group_folds(pair_groups(table), spec.folds, rng)
    scores = np.full(n, np.nan)
    trained_on: list[np.ndarray] = []
    with _workdir() as tmp:
        for f in range(spec.folds):
            test, train = np.flatnonzero(fold_of == f), np.flatnonzero(fold_of != f)
            if test.size == 0:  # a fold left empty by one large group: nothing to score
                trained_on.append(np.empty(0, dtype=np.int64))
                continue
            if train.size < 2:
                raise PrefdataError("the fine-tuned reward-model voter needs pairs outside each fold to train on, "
                                    "but nearly every pair shares a prompt or an answer with the others; it needs "
                                    "independent groups of pairs")
            if spec.subset is not None and train.size > spec.subset:
                train = np.sort(rng.choice(train, size=spec.subset, replace=False))
            if progress:
                print(f"finetuned_rm: fold {f + 1}/{spec.folds}: training on {train.size} pairs, "
                      f"scoring {test.size}", file=sys.stderr)
            fold_dir = Path(tmp) / f"fold{f}"
            model_dir = _train(table.take(train), spec, seed + f, fold_dir, soft=False)
            scores[test] = _score(table.take(test), model_dir, spec)
            shutil.rmtree(fold_dir, ignore_errors=True)  # free the disk before the next fold's model lands
            trained_on.append(train)
    return FinetunedFit(name=family_name(spec), scores=scores, fold_of=fold_of, trained_on=trained_on)


def finetuned_votes(table: pa.Table, spec: FinetunedRMVoter, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """{"ftrm:<model>": held-out r(chosen) - r(rejected) per pair}: one voter family."""
    fit = finetuned_cross_fit(table, spec, seed=seed, progress=progress)
    return {fit.name: fit.scores}


def finetuned_heldout_accuracy(train: pa.Table, test: pa.Table, spec: FinetunedRMVoter, seed: int = 0) -> float:
    """Pairwise accuracy on `test` (share with r(chosen) > r(rejected); ties are wrong) of one reward model
    trained on `train`, with its `label_prob` as soft labels when it has that column."""
    seed = spec.seed if spec.seed is not None else seed
    if spec.subset is not None and train.num_rows > spec.subset:
        pick = np.random.default_rng(seed).choice(train.num_rows, size=spec.subset, replace=False)
        train = train.take(np.sort(pick))
    with _workdir() as tmp:
        model_dir = _train(train, spec, seed, Path(tmp), soft="label_prob" in train.column_names)
        d = _score(test, model_dir, spec)
    return float(np.mean(d > 0))
