"""The built-in step types: importing a module runs its `@step` declarations.

This is the one place that lists which modules declare steps. It sits above them (they import only
the leaf `prefdata.steps`) and below the pipeline and the CLI, so the import graph stays acyclic:

    prefdata.cli -> prefdata.pipeline -> prefdata.catalog -> generators, curation, trainers.steps,
    prefdata.eval_steps -> prefdata.steps

The imports are real module imports (checked by `lint-imports`), not strings resolved at run time.
Step modules keep their heavy dependencies (torch, transformers, sentence-transformers) inside the
functions that run a model, so loading the catalog stays cheap (~2 s, ~110 MiB instead of ~12 s and
~300 MiB with torch); tests/test_startup.py fails if a module-level import brings torch back.
"""

from __future__ import annotations

from prefdata import dedup, eval_steps  # noqa: F401  (dedup; eval_noise, eval_rm_accuracy, eval_policy, ...)
from prefdata.curation import step as curation_step
from prefdata.evals import compare  # noqa: F401  (holdout, eval_compare)
from prefdata.generators import bpo, conditional, medical, rejection, rlcd, self_reward  # noqa: F401
from prefdata.steps import StepType, registered
from trainers import steps as train_steps  # noqa: F401  (train_sft, train_dpo, ...)

curation_step.register()  # clean_labels declares itself through a function, not a decorator


def step_types() -> dict[str, StepType]:
    return registered()
