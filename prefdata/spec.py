"""A pipeline file as typed specs: `PipelineSpec` maps 1:1 onto the YAML, each step's `config` onto the
Config its step type registered. `load_spec` reads, overrides (`--set`) and validates it once; unknown
keys anywhere are errors naming the file and the key path. `select_steps` keeps the steps of
`--only`/`--from`. Nothing here runs a step (prefdata/pipeline.py does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from prefdata.config import apply_overrides, fmt_validation, read_yaml
from prefdata.costs import BudgetSpec
from prefdata.engines import EngineOverrides, overrides_dict
from prefdata.errors import ConfigError, PrefdataError
from prefdata.executors import ENV as EXECUTOR_ENV
from prefdata.executors import ExecutorConfig, with_env
from prefdata.steps import StepType

DEFAULT_SHARD_ROWS = 2048  # a few engine batches' worth: keeps the engine busy, memory a few MiB


def step_types() -> dict[str, StepType]:
    """Every declared step type (loading the built-in ones on first call)."""
    from prefdata.catalog import step_types as builtin

    return builtin()




class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique step name, used by `--set steps.<name>.…` and `step:<name>` inputs.")
    uses: str = Field(description="Registered step type, e.g. rlcd, conditional, self_reward, bpo, clean_labels.")
    input: str = Field(description="A file, a store ref (name@v1), `builtin:<prompt set>` or `step:<earlier step>`.")
    output: str = Field(description="Store dataset name the result is committed under (train/eval steps: the "
                                    "name of their model or report folder).")
    limit: int | None = Field(None, ge=1, description="Use only the first N input rows (smoke runs).")
    engine: EngineOverrides | None = Field(None, description="Engine overrides for this step (merged over the "
                                          "pipeline's); any EngineConfig field.")
    config: dict = Field(default_factory=dict, description="The step type's own config; keys are checked.")
    max_failure_rate: float = Field(0.0, ge=0.0, le=1.0, description="Largest share of failed engine requests "
                                    "the step may commit with (recorded in lineage and the card); above it the run "
                                    "fails and a rerun retries the failures.")
    dedup: bool = Field(False, description="Drop rows that repeat an earlier row's id or content before commit.")
    allow_empty: Literal["none", "chosen", "rejected", "both"] = Field(
        "none", description="Keep input pairs whose chosen, rejected or both answers are empty instead of failing "
                            "or quarantining them (files and store refs; see io.read).")
    shard_rows: int | None = Field(None, ge=1, le=10_000_000, description="Rows per shard for a streaming step "
                                   "(default: the pipeline's shard_rows). Changes memory, never the output.")
    # (config, the step type's Config validated from it): set by load_spec, read by typed_config.
    _typed: tuple[dict, BaseModel] | None = PrivateAttr(None)


class RepeatSpec(BaseModel):
    """`repeat: {times: T, carry: {model: step:dpo}}`: run the step list T times. After iteration t,
    each carry key is set to what the named step produced in t, for iteration t+1. A key is a `--set`
    path (`engine.model`, `steps.gen.engine.model`); `model` is short for `engine.model`."""

    model_config = ConfigDict(extra="forbid")
    times: int = Field(ge=1, le=100, description="Iterations; outputs are committed as <output>-iter<t>.")
    carry: dict[str, str] = Field(default_factory=dict, description="key -> step:<a model step>, "
                                  "e.g. {model: step:dpo} makes M_{t+1} the engine model of iteration t+1.")


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "pipeline"
    description: str = ""
    seed: int = 0
    engine: EngineOverrides = Field(default_factory=EngineOverrides,
                                    description="EngineConfig fields shared by every step.")
    on_error: str = Field("raise", pattern="^(raise|quarantine)$",
                          description="Bad input rows: fail (raise) or set them aside with a reason.")
    repeat: RepeatSpec | None = Field(None, description="Run the steps T times, carrying models between iterations.")
    shard_rows: int = Field(DEFAULT_SHARD_ROWS, ge=1, le=10_000_000, description="Rows per shard: a streaming "
                            "(row-wise) step reads, generates and writes this many rows at a time, so peak memory "
                            "stays flat as the input grows. The version and its content hash do not depend on it.")
    budget: BudgetSpec | None = Field(None, description="Stop the run before it spends more: {usd: …, tokens: …} "
                                      "(see prefdata/costs.py); a rerun with a larger budget resumes from the cache.")
    prices: str | None = Field(None, description="A prices YAML (model -> input/output USD per million tokens) "
                               "whose entries win over the packaged prefdata/data/prices.yaml.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where model calls run: "
                                     "{type: local} (default) or {type: ray, address, workers, gpus_per_worker, …}; "
                                     "see prefdata/executors/__init__.py. Never part of a step's fingerprint.")
    steps: list[StepSpec] = Field(min_length=1, description="At least one step.")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PipelineSpec:
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of pipeline keys (name, engine, steps), "
                          f"got a {type(raw).__name__}")
    # Environment over the file, `--set` over both (precedence: prefdata/executors/__init__.py).
    if "executor" in raw or any(os.environ.get(v) for v in EXECUTOR_ENV):
        raw["executor"] = with_env(raw.get("executor"))
    raw = apply_overrides(raw, overrides or [], str(path))
    if isinstance(raw.get("steps"), list) and not raw["steps"]:
        raise ConfigError(f"{path}: 'steps' is empty; a pipeline needs at least one step")
    step_names = [s.get("name") if isinstance(s, dict) else None for s in raw.get("steps") or []] \
        if isinstance(raw.get("steps"), list) else None
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(fmt_validation(str(path), "", e, step_names)) from None
    names = [s.name for s in spec.steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: step names must be unique, got {names}")
    types = step_types()
    from prefdata.engines import EngineConfig

    try:
        EngineConfig(**overrides_dict(spec.engine))
    except ValidationError as e:
        raise ConfigError(fmt_validation(str(path), "engine", e)) from None
    models: set[str] = set()  # model steps seen so far: what `step:<name>` may name in an engine/config
    for s in spec.steps:
        if s.uses not in types:
            raise ConfigError(f"{path}: steps.{s.name}.uses: unknown step type '{s.uses}' "
                              f"(known: {', '.join(sorted(types))})")
        try:
            typed_config(s, types[s.uses])  # validated once; the run reads it from the spec
        except ValidationError as e:
            raise ConfigError(fmt_validation(str(path), f"steps.{s.name}.config", e)) from None
        for where, ref in step_refs({"engine": overrides_dict(s.engine), "config": s.config}):
            if ref not in models:
                raise ConfigError(f"{path}: steps.{s.name}.{where}: 'step:{ref}' names no earlier train step "
                                  f"(train steps before it: {sorted(models) or 'none'})")
        if types[s.uses].output == "model":
            owned = [k for k in ("dataset", "output_dir") if k in s.config]
            if owned:  # checked here too (trainers/steps.py), so the run fails before its first step
                raise ConfigError(f"{path}: steps.{s.name}.config: {', '.join(owned)} is set by the pipeline "
                                  "(the step's input and its model folder); remove it")
            models.add(s.name)
    for where, ref in step_refs({"engine": overrides_dict(spec.engine)}):
        raise ConfigError(f"{path}: {where}: 'step:{ref}' in the pipeline engine; name a model step in a "
                          "step's engine, or carry it with repeat")
    if spec.repeat is not None:
        for key, ref in spec.repeat.carry.items():
            if not (ref.startswith("step:") and ref[5:] in models):
                raise ConfigError(f"{path}: repeat.carry.{key}: expected step:<a train step>, got '{ref}' "
                                  f"(train steps: {sorted(models) or 'none'})")
    return spec


def step_refs(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every `step:<name>` string inside engine/config blocks, with its dotted location."""
    if isinstance(node, str):
        return [(where, node[5:])] if node.startswith("step:") else []
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in step_refs(v, f"{where}.{k}" if where else str(k))]
    if isinstance(node, list):
        return [r for i, v in enumerate(node) for r in step_refs(v, f"{where}.{i}")]
    return []


def resolve_refs(node: Any, models: dict[str, str]) -> Any:
    """The same structure with each `step:<model step>` replaced by that model's checkpoint folder."""
    if isinstance(node, str):
        return models[node[5:]] if node.startswith("step:") and node[5:] in models else node
    if isinstance(node, dict):
        return {k: resolve_refs(v, models) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_refs(v, models) for v in node]
    return node


def typed_config(step: StepSpec, stype: StepType) -> BaseModel:
    """The step's `config` as its type's Config. load_spec validates it and the spec keeps the result
    (copies of the spec too); it is validated again only once the run has changed it (a
    `step:<model>` resolved to its folder, a key carried by `repeat`)."""
    if step._typed is None or step._typed[0] != step.config:
        step._typed = (step.config, stype.config.model_validate(step.config))
    return step._typed[1]


def select_steps(spec: PipelineSpec, only: list[str] | None, start: str | None, source: str) -> PipelineSpec:
    """The spec with only the chosen steps (`--only A --only B`, or `--from A`: A and every step after
    it). A kept step that reads `step:X` of a step left out reads X's output as committed: X's
    `output@latest` in the store, or an error saying to run X first."""
    if not only and not start:
        return spec
    names = [s.name for s in spec.steps]
    for n in [*(only or []), *([start] if start else [])]:
        if n not in names:
            raise ConfigError(f"{source}: no step named '{n}' (steps: {', '.join(names)})")
    if only and start:
        raise ConfigError("use --only or --from, not both")
    keep = set(only) if only else set(names[names.index(start):])
    if spec.repeat:
        raise ConfigError(f"{source}: --only/--from do not apply to a pipeline with `repeat:`; run it whole")
    from prefdata import store

    dropped = {s.name: s for s in spec.steps if s.name not in keep}
    steps = []
    for s in spec.steps:
        if s.name not in keep:
            continue
        if s.input.startswith("step:") and s.input[5:] in dropped:
            up = dropped[s.input[5:]]
            try:
                ref = store.resolve(f"{up.output}@latest").ref
            except PrefdataError:
                raise ConfigError(f"{source}: step '{s.name}' reads step:{up.name}, which is left out and has no "
                                  f"version of '{up.output}' yet; run it first, or --set steps.{s.name}.input=REF") from None
            s = s.model_copy(update={"input": ref})
        steps.append(s)
    return spec.model_copy(update={"steps": steps})
