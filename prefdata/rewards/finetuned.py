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
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefdata.errors import PrefdataError
from prefdata.models import DEFAULT_MODEL


class FinetunedRMVoter(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    type: Literal["finetuned_rm"] = "finetuned_rm"
    model: str = Field(DEFAULT_MODEL, description="Backbone to fine-tune: hub id or local path; the default is the "
                       "embedded SmolLM2-135M-Instruct, so it works offline.")
    folds: int = Field(2, ge=2, le=20, description="Cross-fitting folds, in [2, 20]. Each fold trains one model, so "
                       "cost grows linearly; 2 is the cheapest setting that still holds every pair out.")
    lora: bool = Field(True, description="Train LoRA adapters (r=8, all linear layers) instead of all weights: "
                       "~10x less optimizer memory and far less overfitting on a few thousand pairs.")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps per fold, >= 1, or -1 for one pass over the "
                           "fold's training pairs. One epoch is the usual reward-model budget (InstructGPT); "
                           "more overfits the labels we are trying to check.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="AdamW step size, in (0, 1]. LoRA wants ~10x the "
                                 "full fine-tuning rate; 1e-4 is the common LoRA reward-model setting.")
    max_length: int = Field(512, ge=16, le=131072, description="Tokens per prompt+answer, in [16, 131072]. Training "
                            "drops longer pairs (TRL's reward trainer); scoring truncates from the left so the "
                            "answer being judged is kept.")
    batch_size: int = Field(8, ge=1, le=1024, description="Pairs per step (training) and texts per forward pass "
                            "(scoring), in [1, 1024]; lower it when memory runs out.")
    seed: int | None = Field(None, description="Seed for folds, subsets, head init and data order; default the "
                             "caller's seed, so a rerun of the step reproduces the vote.")
    subset: int | None = Field(None, ge=2, description="Train each fold's model on at most this many pairs "
                               "(>= 2, drawn at random); for CPU runs. Every pair is still scored.")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint (hub models only); off "
                                    "by default because it runs code from the model's repository.")

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0:  # HF reads 0 as "use epochs"; refuse it rather than train a surprise epoch
            raise ValueError("max_steps must be >= 1, or -1 for one pass over the training pairs")
        return v


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
    from prefdata.rewards.reward_model import RewardModelVoter, reward_model_votes

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
