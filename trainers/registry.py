"""The one lookup of trainers: kind -> the module that holds its `Config` and `train(cfg) -> card path`.

`prefdata train <kind>` (trainers.cli), `python -m trainers.<kind>` and the pipeline's `train_<kind>`
steps (trainers.steps) all come here. A trainer module is imported on first use: each pulls in torch
and TRL (seconds), which `prefdata --help` or a pipeline without train steps should not pay for.

The modules are named, not imported, so this leaf imports nothing of trainers: every trainer's
`main()` imports trainers.cli, which looks trainers up here, and a plain import back would be a
cycle. The contracts in pyproject.toml keep the named modules below the pipeline instead, and
tests/test_trainers_registry.py imports every one.

Adding a trainer: one module with `Config` and `train`, and one line in `TRAINERS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from prefdata.errors import ConfigError


@dataclass(frozen=True)
class TrainerSpec:
    module: str  # defines `Config` (its YAML keys / --set fields) and `train(cfg) -> Path` (the card)
    reads: str = "pair"  # the record kind a pipeline step feeds it (prefdata.schema)
    merges_lora: bool = False  # merges its own LoRA adapter, so a pipeline step has none to merge


TRAINERS: dict[str, TrainerSpec] = {
    "sft": TrainerSpec("trainers.sft"),
    "dpo": TrainerSpec("trainers.dpo"),
    "kto": TrainerSpec("trainers.kto"),
    "orpo": TrainerSpec("trainers.orpo"),
    "reward": TrainerSpec("trainers.reward", merges_lora=True),
    # The ranking trainers read a candidates table (or the pair version that names one).
    "rrhf": TrainerSpec("trainers.rrhf", reads="completion"),
    "pro": TrainerSpec("trainers.pro", reads="completion"),
    "armo": TrainerSpec("trainers.armo"),  # no LoRA: a frozen backbone, heads only
}
KINDS = tuple(TRAINERS)


def spec(kind: str) -> TrainerSpec:
    """The record of trainer `kind`; an unknown kind is a ConfigError listing the known ones."""
    try:
        return TRAINERS[kind]
    except KeyError:
        raise ConfigError(f"unknown trainer '{kind}' (known: {', '.join(KINDS)})") from None


def module(kind: str) -> ModuleType:
    """The trainer module of `kind`, imported on first use."""
    return importlib.import_module(spec(kind).module)


def config_class(kind: str) -> type:
    return module(kind).Config
