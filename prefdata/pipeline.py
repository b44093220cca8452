"""YAML pipelines: a file names steps, each step reads an input and commits a store version.

    prefdata run pipelines/quickstart.yaml --set steps.rlcd.config.max_tokens=64

A pipeline file maps 1:1 onto `PipelineSpec` below; every step's `config` maps 1:1 onto the pydantic
Config its step type registered. Unknown keys anywhere are errors that name the file and the key.

Resume: each step has a fingerprint (step type, its config, the engine settings that change outputs,
the input's content). A step whose fingerprint is already committed is skipped, and inside a step the
request cache means a killed run regenerates nothing it finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import prefdata
from prefdata import artifacts, costs, interrupts, progress, quality, step_health
from prefdata.config import _parse_value, apply_overrides, fingerprint_dump, fmt_validation, read_yaml  # noqa: F401  (re-exports)
from prefdata.costs import BudgetSpec, Meter
from prefdata.engines import EngineOverrides, overrides_dict
from prefdata.errors import ConfigError, PrefdataError
from prefdata.executors import ENV as EXECUTOR_ENV
from prefdata.executors import ExecutorConfig, with_env
from prefdata.redact import redact, redact_obj
from prefdata.step_health import Counts, Tally
from prefdata.steps import StepResult, StepType, register_step  # noqa: F401  (re-exported for step authors)

_fmt_validation = fmt_validation
DEFAULT_SHARD_ROWS = 2048  # a few engine batches' worth: keeps the engine busy, memory a few MiB


def step_types() -> dict[str, StepType]:
    """Every declared step type (loading the built-in ones on first call)."""
    from prefdata.catalog import step_types as builtin

    return builtin()


# ----------------------------------------------------------------------------- spec


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


@dataclass
class StepContext:
    spec: PipelineSpec
    step: StepSpec
    source_file: str
    seed: int
    executor: str = "local"
    executor_config: ExecutorConfig | None = None  # the Ray settings when executor == "ray"
    _engines: dict = field(default_factory=dict)
    # What this step's engines returned (for honest failure), and run-wide notes already printed.
    counts: Counts = field(default_factory=Counts)
    warnings: list[str] = field(default_factory=list)
    _warned: set = field(default_factory=set)
    input_ref: str | None = None  # the input's lineage name (store ref, file path, builtin:<set>)
    meter: Meter | None = None  # prices and the run's budget (prefdata.costs)
    # A streaming step is called once per shard: which one this is. Only the first shard's card
    # sections and figures are kept, so a step may skip drawing them when `shard > 0`.
    shard: int = 0
    shards: int = 1
    artifact_dir: Path | None = None  # train/eval steps write here

    def engine_config(self, override: EngineOverrides | dict | None = None):
        from prefdata.engines import EngineConfig

        merged = {**overrides_dict(self.spec.engine), **overrides_dict(self.step.engine), **overrides_dict(override)}
        try:
            return EngineConfig(**merged)
        except ValidationError as e:
            raise ConfigError(_fmt_validation(self.source_file, f"steps.{self.step.name}.engine", e)) from None

    def engine(self, override: EngineOverrides | dict | None = None):
        """One engine per distinct config per run: loading a model twice wastes minutes on CPU."""
        from prefdata.engines import get_engine

        cfg = self.engine_config(override)
        if cfg.trust_remote_code:
            note = (f"trust_remote_code is on for model '{redact(cfg.model)}': code shipped with the checkpoint "
                    "runs on this machine with your permissions")
            if note not in self.warnings:
                self.warnings.append(note)
            if note not in self._warned:  # once per run, however many steps or calls use it
                self._warned.add(note)
                print(f"warning: {note}", file=sys.stderr)
        key = cfg.model_dump_json()
        if key not in self._engines:
            if self.executor == "ray":
                from prefdata.executors.ray import RayEngine

                self._engines[key] = RayEngine(cfg, self.executor_config or self.spec.executor)
            else:
                self._engines[key] = get_engine(cfg)
        if self.meter is not None:
            self.meter.check(self._engines[key])
        return Tally(self._engines[key], self.counts, self.meter, self.step.name)


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
        raise ConfigError(_fmt_validation(str(path), "", e, step_names)) from None
    names = [s.name for s in spec.steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: step names must be unique, got {names}")
    types = step_types()
    from prefdata.engines import EngineConfig

    try:
        EngineConfig(**overrides_dict(spec.engine))
    except ValidationError as e:
        raise ConfigError(_fmt_validation(str(path), "engine", e)) from None
    models: set[str] = set()  # model steps seen so far: what `step:<name>` may name in an engine/config
    for s in spec.steps:
        if s.uses not in types:
            raise ConfigError(f"{path}: steps.{s.name}.uses: unknown step type '{s.uses}' "
                              f"(known: {', '.join(sorted(types))})")
        cfg_model = types[s.uses].config
        try:
            cfg_model.model_validate(s.config)
        except ValidationError as e:
            raise ConfigError(_fmt_validation(str(path), f"steps.{s.name}.config", e)) from None
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


# ----------------------------------------------------------------------------- inputs

BUILTIN_DIR = Path(__file__).parent / "data"


def read_input(source: str, step_outputs: dict[str, Any], on_error: str, quarantine_path: Path,
               allow_empty: str = "none") -> tuple[pa.Table, str]:
    """Return (table, lineage name of the source)."""
    from prefdata import io

    if source.startswith("step:"):
        name = source[5:]
        if name not in step_outputs:
            raise ConfigError(f"input '{source}': no earlier step named '{name}'")
        version = step_outputs[name]
        if isinstance(version, artifacts.Artifact):
            raise ConfigError(f"input '{source}': step '{name}' produced a {version.kind}, not a dataset; "
                              f"name it in an engine or config `model:` instead")
        from prefdata import store

        return store.load_table(version.ref), version.ref
    if source.startswith("builtin:"):
        name = source[8:]
        path = BUILTIN_DIR / f"{name}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
            raise PrefdataError(f"unknown built-in prompt set '{name}' (known: {', '.join(known)})")
        return io.read(str(path), on_error=on_error, quarantine_path=quarantine_path), source
    keep = {} if allow_empty == "none" else {"allow_empty": allow_empty}
    table = io.read(source, on_error=on_error, quarantine_path=quarantine_path, **keep)
    if "@" in source and not Path(source).exists():
        from prefdata import store

        return table, store.resolve(source).ref
    return table, str(Path(source).resolve())


DIGEST_ROWS = 65536  # the input is hashed in slices this long: one Parquet image of the whole table is not kept


def _table_digest(table: pa.Table) -> str:
    """The input's digest for the fingerprint. A split of a store version, as the store's reader gave it
    (`step:` and `name@vN` inputs), is named by the version's content hash, checked when it was read;
    any other table (a file's rows, a `limit` slice) by its rows, re-encoded as Parquet."""
    import pyarrow.parquet as pq

    from prefdata import store

    if (stored := store.core.stored_digest(table)) is not None:
        return stored
    h = hashlib.sha256()
    for start in range(0, max(table.num_rows, 1), DIGEST_ROWS):
        sink = pa.BufferOutputStream()
        pq.write_table(table.slice(start, DIGEST_ROWS), sink)
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def fingerprint(step: StepSpec, step_cfg: BaseModel, engine_cfg: Any, input_digest: str, seed: int, *,
                config: dict | None = None, engine: dict | None = None) -> str:
    """What determines a step's output. Run-only settings (batch budget, concurrency, progress,
    cache location: the fields marked RUN_ONLY, prefdata/config.py) are left out so changing them
    never invalidates finished work. `config` and `engine`: the two configs' JSON dumps, if made already."""
    eng = fingerprint_dump(engine_cfg, engine) if engine_cfg is not None else {}
    blob = json.dumps({"uses": step.uses, "config": fingerprint_dump(step_cfg, config), "engine": eng,
                       "input": input_digest, "limit": step.limit, "seed": seed,
                       "prefdata": prefdata.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- run


def _find_committed(name: str, fp: str):
    """The newest version of `name` whose lineage carries this step fingerprint, if any."""
    from prefdata import store

    try:
        versions = store.list_versions(name)
    except PrefdataError:
        return None
    for v in reversed(versions):
        if (v.manifest.get("lineage") or {}).get("fingerprint") == fp:
            return v
    return None


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


def dry_run(spec: PipelineSpec, source: str) -> list[dict]:
    """What each step would do, without running anything or calling a model: its input and rows, its
    output, and whether a version with its fingerprint is already committed (then it would be skipped).
    A step reading a step that would run first cannot be fingerprinted before it runs."""
    from prefdata import store

    types = step_types()
    out, pending = [], set()
    for step in spec.steps:
        row = {"step": step.name, "uses": step.uses, "input": step.input, "output": step.output, "rows": None,
               "action": "run"}
        stype = types[step.uses]
        if step.input.startswith("step:") and step.input[5:] in pending:
            row["action"] = f"run (after {step.input[5:]}; its rows are not known yet)"
            pending.add(step.name)
            out.append(row)
            continue
        try:
            done_inputs = {s["step"]: store.resolve(f"{s['output']}@latest") for s in out
                           if s["action"].startswith("skip")}
            table, ref = read_input(step.input, done_inputs, spec.on_error, Path(os.devnull), step.allow_empty)
        except PrefdataError as e:
            row["action"] = f"cannot read its input: {e}"
            out.append(row)
            pending.add(step.name)
            continue
        if step.limit is not None:
            table = table.slice(0, step.limit)
        row["rows"] = len(table)
        step_cfg = stype.config.model_validate(step.config)
        ctx = StepContext(spec=spec, step=step, source_file=source, seed=spec.seed, executor="local",
                          executor_config=None, _engines={}, _warned=set(), input_ref=ref, meter=None)
        engine_cfg = ctx.engine_config() if getattr(step_cfg, "needs_engine", True) else None
        row["model"] = getattr(engine_cfg, "model", None)
        fp = fingerprint(step, step_cfg, engine_cfg, _table_digest(table), spec.seed)
        done = None if stype.artifact else _find_committed(step.output, fp)
        if done is not None and not step_health.recorded_failures(done):
            row["action"] = f"skip: already committed as {done.ref}"
        else:
            pending.add(step.name)
            if not stype.artifact and getattr(step_cfg, "needs_engine", True):
                row.update(_count_requests(spec, step, stype, step_cfg, table, ref, source))
        out.append(row)
    return out


class _DryEngines(dict):
    """Engines for a dry run, made on first use from the engine config's JSON key: nothing loads a model."""

    def __contains__(self, key) -> bool:
        if not dict.__contains__(self, key):
            from prefdata.engines import EngineConfig
            from prefdata.engines.dry import dry_engine

            dict.__setitem__(self, key, dry_engine(EngineConfig.model_validate_json(key)))
        return True


def _count_requests(spec, step, stype, step_cfg, table, ref, source) -> dict:
    """Run the step's own code against dry engines (`engines/dry.py`): the requests it would send, the
    cache's hits, and for priced models the cost bound (prompt characters / 4, max_tokens per answer)."""
    engines = _DryEngines()
    ctx = StepContext(spec=spec, step=step, source_file=source, seed=spec.seed, executor="local",
                      executor_config=None, _engines=engines, _warned=set(), input_ref=ref, meter=None)
    note = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            stype.run(step_cfg, table, ctx)
    except Exception as e:  # noqa: BLE001 - a step may stop on placeholder answers; the counts so far stand
        note = f"the step stopped on the placeholder answers ({type(e).__name__}); counts are up to there"
    sent = sum(len(e.backend.sent) for e in engines.values())
    hits = sum(e.cache.hits for e in engines.values())
    scored = sum(e.backend.scored for e in engines.values())
    usd = 0.0
    priced = False
    prices, _ = costs.load_prices(spec.prices)
    for e in engines.values():
        price = costs.price_for(prices, e.backend.cfg.model)
        if price is None or not e.backend.sent:
            continue
        priced = True
        usd += price.usd(sum(costs._prompt_chars(r) for r, _ in e.backend.sent) / 4,
                         sum(p.max_tokens for _, p in e.backend.sent))
    return {"requests": sent, "cached": hits, "scored": scored, "usd": round(usd, 4) if priced else None,
            "note": note}


def run_pipeline(path: str | Path, overrides: list[str] | None = None, *, executor: str | None = None,
                 command: str | None = None, only: list[str] | None = None, start: str | None = None) -> dict[str, Any]:
    """Run every step (or those `only` names, or those from `start` on) and return {step name:
    committed store Version or Artifact}; with `repeat`, the keys are `iter<t>.<step name>`. `executor`
    (local or ray) wins over the YAML's executor.type."""
    from prefdata import store

    spec = select_steps(load_spec(path, overrides), only, start, str(path))
    executor = executor or spec.executor.type
    if executor not in ("local", "ray"):
        raise PrefdataError(f"unknown executor '{executor}' (local or ray)")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ModuleNotFoundError:
            raise PrefdataError("--executor ray needs Ray: pip install 'prefdata[ray]'") from None
    command = command or "prefdata run " + " ".join(shlex.quote(a) for a in [str(path)] + [f"--set={o}" for o in (overrides or [])])
    run = _Run(path=str(path), executor=executor, command=redact(command), executor_config=spec.executor)
    run.meter = Meter.for_run(spec, path, run.engines, store.home())
    times = spec.repeat.times if spec.repeat else 1
    suffix = (lambda t: f"-iter{t}") if spec.repeat else (lambda t: "")
    for t in range(1, times + 1):  # every output name is checked before any step reads or writes anything
        for s in spec.steps:
            store.check_name(s.output)  # the name as written first: that is what the error should quote
            store.check_name(s.output + suffix(t))
    try:
        results = _iterate(run, spec, times, str(path))
    except BaseException:
        run.meter.save()  # a budgeted run's next attempt counts what this one spent
        raise
    finally:
        # Ray engine pools live for the whole run: shut them down (and merge their cache shards)
        # however it ends, Ctrl-C included.
        for eng in run.engines.values():
            close = getattr(eng, "close", None)
            if close is not None:
                close()
    run.meter.done()
    total = run.meter.cost({k: dict(e.stats or {}) for k, e in run.engines.items()})
    if total["billable"]:
        from rich.console import Console

        Console(stderr=True).print(f"run {costs.summary_line(total)}")
    return results


def _iterate(run: _Run, spec: PipelineSpec, times: int, path: str) -> dict[str, Any]:
    if not spec.repeat:
        return run.iteration(spec, seed=spec.seed)
    results: dict[str, Any] = {}
    previous: dict[str, Any] = {}
    it_spec = spec
    for t in range(1, times + 1):
        outputs = run.iteration(it_spec, seed=spec.seed + t - 1, iteration=t, previous=previous)
        results.update({f"iter{t}.{k}": v for k, v in outputs.items()})
        previous = outputs
        carried = {key: outputs[ref[5:]].ref for key, ref in spec.repeat.carry.items()}
        it_spec = _carry(spec, carried, str(path))
    return results


def _carry(spec: PipelineSpec, carried: dict[str, str], source: str) -> PipelineSpec:
    """The spec for the next iteration: each carried key set to the model the last one trained."""
    raw = spec.model_dump(mode="json", exclude_none=False)
    for key, value in carried.items():
        parts = ("engine.model" if key == "model" else key).split(".")
        node: Any = raw
        for part in parts[:-1]:
            if isinstance(node, list):  # inside `steps`, a step is addressed by its name
                node = next((s for s in node if s.get("name") == part), None)
                if node is None:
                    raise ConfigError(f"{source}: repeat.carry.{key}: no step named '{part}'")
                continue
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_fmt_validation(source, "repeat.carry", e)) from None


@dataclass
class _Run:
    """What one `prefdata run` shares across its steps and iterations."""

    path: str
    executor: str
    command: str
    engines: dict = field(default_factory=dict)  # shared by every step: a model loads once per run
    warned: set = field(default_factory=set)  # trust_remote_code warnings already printed
    meter: Meter | None = None
    executor_config: ExecutorConfig | None = None

    def iteration(self, spec: PipelineSpec, *, seed: int, iteration: int | None = None,
                  previous: dict | None = None) -> dict[str, Any]:
        from rich.console import Console

        console = Console(stderr=True)
        types = step_types()
        outputs: dict[str, Any] = {}
        models: dict[str, str] = {}  # model step name -> checkpoint folder, for `step:<name>` in engines/configs
        for step in spec.steps:
            step = step.model_copy(update={
                "engine": EngineOverrides(**resolve_refs(overrides_dict(step.engine), models)) if step.engine else None,
                "config": resolve_refs(step.config, models),
                "output": step.output + (f"-iter{iteration}" if iteration else "")})
            stype = types[step.uses]
            out = self.step(spec, step, stype, outputs, seed, console, iteration, (previous or {}).get(step.name))
            outputs[step.name] = out
            if isinstance(out, artifacts.Artifact) and out.kind == "model":
                models[step.name] = out.ref
        return outputs

    def step(self, spec, step, stype: StepType, outputs, seed, console, iteration, previous):
        from prefdata import store

        path, executor, command, engines = self.path, self.executor, self.command, self.engines
        step_cfg = stype.config.model_validate(step.config)
        quarantine = store.quarantine_path(step.output)
        table, source_ref = read_input(step.input, outputs, spec.on_error, quarantine, step.allow_empty)
        if step.limit is not None:
            table = table.slice(0, step.limit)
        ctx = StepContext(spec=spec, step=step, source_file=str(path), seed=seed, executor=executor,
                          executor_config=self.executor_config, _engines=engines, _warned=self.warned,
                          input_ref=source_ref, meter=self.meter)
        engine_cfg = ctx.engine_config() if getattr(step_cfg, "needs_engine", True) else None
        fp = fingerprint(step, step_cfg, engine_cfg, _table_digest(table), seed)
        # Iterations link: a step's output in iteration t names its own output in iteration t-1.
        parents = [source_ref] + ([previous.ref] if previous is not None else [])
        loop = {"iteration": iteration} if iteration else {}
        if stype.artifact:
            return self.artifact_step(step, stype, step_cfg, table, ctx, engine_cfg, fp, parents, loop, console)
        done = _find_committed(step.output, fp)
        if done is not None and not step_health.recorded_failures(done):
            console.print(f"[green]✓[/] {step.name}: already committed as {done.ref} (fingerprint {fp}), skipped")
            return done
        if done is not None:  # committed with failed requests: ask for those again
            console.print(f"[yellow]↻[/] {step.name}: {done.ref} had {step_health.recorded_failures(done)} failed "
                          "requests; retrying them (the rest comes from the request cache)")
        shard_rows = (step.shard_rows or spec.shard_rows) if stype.streaming else max(len(table), 1)
        n_shards = max(1, -(-len(table) // shard_rows))
        console.print(f"[bold]▶ {step.name}[/] ({step.uses}) on {len(table)} rows from {redact(source_ref)}"
                      + (f" in {n_shards} shards of {shard_rows}" if n_shards > 1 else ""))
        t0 = time.time()
        stats_before = {k: dict(e.stats) for k, e in engines.items()}
        with _Sink(store, step.output) as sink:
            first, report, n_dups = None, {}, 0
            dedupers: dict[str, store.Deduper] = {}
            bar = (progress.progress_bar(f"{step.name} shards", len(table)) if n_shards > 1
                   else nullcontext(lambda n=1, note=None: None))
            with bar as advance:
                for k in range(n_shards):
                    part = table.slice(k * shard_rows, shard_rows) if n_shards > 1 else table
                    ctx.shard, ctx.shards = k, n_shards
                    result = stype.run(step_cfg, part, ctx)
                    if first is None:
                        first = result
                    else:
                        _close_figures(result.figures)
                    report = _merge_reports(report, result.report or {}) if k else dict(result.report or {})
                    for split, t in result.tables.items():
                        if step.dedup:
                            t, n = dedupers.setdefault(split, store.Deduper()).filter(t)
                            n_dups += n
                        sink.write(split, t)
                    for side_name, (side_kind, side_table) in result.side_tables.items():
                        sink.write(split="train", table=side_table, side=(side_name, side_kind))
                    advance(len(part))
            elapsed = time.time() - t0
            usage = engine_usage(engines, stats_before)
            cost = self.meter.cost({k: dict(e.stats or {}) for k, e in engines.items()}, stats_before)
            rows = sink.rows
            if usage.get("requests"):
                console.print("  engine: " + ", ".join(f"{k} {v}" for k, v in usage.items()))
            if cost["billable"]:
                console.print("  " + costs.summary_line(cost))
            # Fails the run (nothing committed) when everything failed, too much failed, or nothing is left.
            step_health.verdict(step.name, ctx.counts, rows, len(table), step.max_failure_rate,
                                report.get("drop_reasons"))
            if done is not None and not step_health.improved(ctx.counts, rows, done):
                console.print(f"[yellow]✓[/] {step.name}: still {ctx.counts.failed} failed requests, no better "
                              f"than {done.ref}; kept it")
                return done
            card_sections = list(first.card_sections or [])
            if n_shards > 1:
                # The step drew its sections and plots from the shard it saw; the store's own
                # statistics (rows, lengths, duplicates, score plots) cover every row.
                card_sections = [(f"{title} (first shard)", text) for title, text in card_sections]
                card_sections.append(("Streaming", streaming_markdown(n_shards, shard_rows, len(table), report)))
            if usage.get("requests"):
                card_sections.append(("Engine usage", usage_markdown(usage)))
            if cost["billable"]:
                card_sections.append(("Cost", costs.card_markdown(cost, self.meter.prices_version)))
            if ctx.counts.failed:
                card_sections.append(("Failed requests", step_health.card_markdown(ctx.counts, step.max_failure_rate)))
            if step.dedup:
                card_sections.append(("Deduplication", f"`dedup: true` dropped {n_dups:,} rows repeating an earlier "
                                                        "row's id or content."))
            if ctx.warnings:
                card_sections.append(("Warnings", "\n".join(f"- {w}" for w in ctx.warnings)))
            engine_lineage = {}
            if engine_cfg is not None:
                eng = ctx.engine()
                engine_lineage = {"engine": eng.name, "model": eng.model_id}
            lineage = {
                "parents": parents,
                "step": {"name": step.name, "uses": step.uses, "config": step_cfg.model_dump(mode="json"),
                         "limit": step.limit, "pipeline": str(path), "max_failure_rate": step.max_failure_rate,
                         "dedup": step.dedup},
                "engine_config": engine_cfg.model_dump(mode="json", exclude={"api_key_env"}) if engine_cfg else None,
                **engine_lineage,
                "seeds": {"pipeline": seed},
                "fingerprint": fp,
                "report": {**report, **({"deduplicated": n_dups} if step.dedup else {}),
                           **({"shards": n_shards, "shard_rows": shard_rows} if n_shards > 1 else {})},
                "elapsed_s": round(elapsed, 2),
                "engine_usage": usage,
                **({"cost": {"usd": cost["usd"], "models": cost["models"]}} if cost["billable"] else {}),
                "failures": step_health.lineage_entry(ctx.counts, step.max_failure_rate),
                "warnings": list(ctx.warnings),
                **loop,
                **first.lineage,
            }
            if n_shards > 1 and lineage.get("description"):  # measured again over every shard's summed counts
                lineage["description"] = quality.restate(lineage.get("description"), report)
            # Redacted once here, so no URL userinfo, token or key reaches a manifest or card.
            lineage, card_sections = redact_obj(lineage), redact_obj(card_sections)
            # A signal inside is held until the block ends: a step's versions are written whole or not at all.
            with interrupts.deferred():
                side_refs = {}
                for side_name, (side_kind, writer) in sink.sides.items():
                    v = sink.commit(writer, kind=side_kind,
                                    lineage=redact_obj({"parents": [source_ref],
                                                        "step": {"name": step.name, "uses": step.uses,
                                                                 "config": step_cfg.model_dump(mode="json")},
                                                        "fingerprint": fp, **loop, **engine_lineage}),
                                    command=command)
                    side_refs[side_name] = v.ref
                lineage["side_tables"] = side_refs
                version = sink.commit(sink.main, kind=first.kind, lineage=lineage, command=command,
                                      card_sections=card_sections, figures=first.figures)
        failed = f", {ctx.counts.failed} failed requests (rerun to retry)" if ctx.counts.failed else ""
        console.print(f"[green]✓[/] {step.name}: {rows} rows → {version.ref} in {elapsed:.1f}s{failed}"
                      + quality.run_line(report), soft_wrap=True)
        return version

    def artifact_step(self, step, stype, step_cfg, table, ctx, engine_cfg, fp, parents, loop, console):
        """A train or eval step: its folder is named by the fingerprint; step.json marks it done."""
        from prefdata import store

        where = artifacts.folder(store.home(), stype.output, step.output, fp)
        done = artifacts.find_done(where, stype.output)
        if done is not None:
            console.print(f"[green]✓[/] {step.name}: already done as {done.ref} (fingerprint {fp}), skipped")
            return done
        console.print(f"[bold]▶ {step.name}[/] ({step.uses}) on {len(table)} rows from {redact(ctx.input_ref)}")
        artifacts.fresh(where)
        ctx.artifact_dir = where
        t0 = time.time()
        result = stype.run(step_cfg, table, ctx)
        lineage = redact_obj({
            "parents": parents,
            "step": {"name": step.name, "uses": step.uses, "config": step_cfg.model_dump(mode="json"),
                     "pipeline": ctx.source_file},
            "engine_config": engine_cfg.model_dump(mode="json", exclude={"api_key_env"}) if engine_cfg else None,
            "seeds": {"pipeline": ctx.seed}, "fingerprint": fp, "elapsed_s": round(time.time() - t0, 2),
            "command": self.command, **loop, **result.lineage})
        manifest = {"kind": stype.output, "name": step.output, "lineage": lineage, "metrics": result.metrics,
                    "card_path": result.card_path or str(where / "README.md")}
        card = artifacts.card_markdown(f"{step.output} ({step.uses})", redact_obj(result.card_sections), manifest)
        with interrupts.deferred():
            out = artifacts.stamp(where, stype.output, manifest, card)
        # The headline numbers only; the card and step.json hold the rest.
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if isinstance(v, (int, float))
                          and not isinstance(v, bool) and ("loss" in k or "accuracy" in k or k == "pairs"))
        console.print(f"[green]✓[/] {step.name}: {out.ref} in {time.time() - t0:.1f}s" + (f" ({shown})" if shown else ""))
        return out


class _Sink:
    """Where a step's shards go: one VersionWriter for its output and one per side table, all
    dropped unless committed. An OSError that names no file (a full disk) is given the dataset's
    folder, so its one-line message says where."""

    def __init__(self, store, name: str):
        self.store, self.name = store, name
        self.sides: dict[str, tuple[str, Any]] = {}
        with self._named(name):
            self.main = store.VersionWriter(name)

    @contextmanager
    def _named(self, name: str):
        try:
            yield
        except OSError as e:
            if e.filename is None:
                e.filename = str(self.store.home() / "datasets" / name)
            raise

    def write(self, split: str, table: pa.Table, side: tuple[str, str] | None = None) -> None:
        if side is None:
            with self._named(self.name):
                self.main.write(split, table)
            return
        side_name, kind = side
        full = f"{self.name}-{side_name}"
        with self._named(full):
            if side_name not in self.sides:
                self.sides[side_name] = (kind, self.store.VersionWriter(full))
            self.sides[side_name][1].write(split, table)

    @property
    def rows(self) -> int:
        return sum(self.main.rows.values())

    def commit(self, writer, **kwargs):
        with self._named(writer.name):
            return writer.commit(**kwargs)

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.main.abort()
        for _, w in self.sides.values():
            w.abort()


def _merge_reports(a: dict, b: dict) -> dict:
    """Two shards' reports as one: counts add up, nested counts merge; any other value that differs
    between shards (a rate, a mean) has no whole-step value here and is left out."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, int) and not isinstance(v, bool) and isinstance(out[k], int):
            out[k] += v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _merge_reports(out[k], v)
        elif out[k] != v:
            del out[k]
    return out


def _close_figures(figures: dict) -> None:
    if figures:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)


def streaming_markdown(n_shards: int, shard_rows: int, input_rows: int, report: dict) -> str:
    """The card's note on a step streamed in shards, with its counts summed over every shard."""
    flat = []

    def walk(d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, int) and not isinstance(v, bool):
                flat.append((f"{prefix}{k}", v))

    walk(report)
    lines = [f"{input_rows:,} input rows ran in {n_shards} shards of up to {shard_rows:,} rows (`shard_rows`). "
             "Sections marked *first shard* were written by the step from its first shard alone; the row counts, "
             "lengths, duplicates and score plots of this card, and the counts below, cover every shard."]
    if flat:
        lines += ["", "| count (all shards) | value |", "|---|---|", *[f"| {k} | {v:,} |" for k, v in flat]]
    return "\n".join(lines)


def engine_usage(engines: dict, before: dict) -> dict[str, int]:
    """What this step cost the engines: requests, failures, retries, tokens (deltas of their stats)."""
    total: dict[str, int] = {}
    for key, eng in engines.items():
        for name, val in (eng.stats or {}).items():
            if isinstance(val, int) and not isinstance(val, bool):
                total[name] = total.get(name, 0) + val - before.get(key, {}).get(name, 0)
    return {k: v for k, v in sorted(total.items()) if v}


def usage_markdown(usage: dict[str, int]) -> str:
    labels = {"requests": "samples requested from the engine (cache hits excluded)",
              "failed": "requests that failed after all retries (kept out of the data)",
              "retries": "retried attempts (429, 5xx, timeouts, dropped connections, malformed replies)",
              "prompt_tokens": "prompt tokens billed by the server", "completion_tokens": "completion tokens "
              "billed by the server", "generated_tokens": "tokens generated locally",
              "worker_restarts": "Ray workers replaced after dying",
              "billed_failures": "unusable replies the server still billed (their tokens are counted above)"}
    rows = [f"| {k} | {v:,} | {labels.get(k, '')} |" for k, v in usage.items()]
    return "\n".join(["| counter | value | meaning |", "|---|---|---|", *rows])


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        file: Path = typer.Argument(..., help="Pipeline YAML, e.g. pipelines/quickstart.yaml"),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set steps.rlcd.limit=8"),
        executor: str = typer.Option(None, help="local or ray; default: the YAML's executor.type (local)"),
        only: list[str] = typer.Option([], "--only", help="Run only this step (repeatable); a step it reads "
                                       "that is left out is read from the store as committed (OUTPUT@latest)."),
        start: str = typer.Option(None, "--from", help="Run this step and every step after it."),
        dry: bool = typer.Option(False, "--dry-run", help="Say what each step would read and do (rows, model, "
                                 "skip or run, requests to send and how many the cache holds, cost for priced "
                                 "models); commits nothing, calls no model."),
    ):
        """Run a YAML pipeline and commit each step's output as a dataset version."""
        # Rebuilt from the parsed options (not sys.argv, which is the host's when called in-process),
        # and redacted: a URL with a password or a key pasted on the command line is never recorded.
        command = redact("prefdata run " + " ".join(shlex.quote(a) for a in [str(file)] + [f"--set={o}" for o in set_]
                                                    + ([f"--executor={executor}"] if executor else [])
                                                    + [f"--only={o}" for o in only] + ([f"--from={start}"] if start else [])))
        raw = read_yaml(file)
        if isinstance(raw, dict) and "self_reward_loop" in raw:
            raise ConfigError(f"{file}: the self_reward_loop format is gone; the loop is an ordinary pipeline "
                              "now (steps + `repeat:`), see pipelines/self_reward_loop.yaml")
        if dry:
            spec = select_steps(load_spec(file, set_), only, start, str(file))
            for r in dry_run(spec, str(file)):
                rows = "?" if r["rows"] is None else r["rows"]
                model = f", model {r['model']}" if r.get("model") else ""
                est = ""
                if r.get("requests") is not None:
                    est = (f"; would send up to {r['requests']} requests ({r['cached']} answered by the cache"
                           + (f", {r['scored']} scorings" if r["scored"] else "") + ")"
                           + (f", at most ${r['usd']:.4f}" if r.get("usd") is not None else "")
                           + (f"; {r['note']}" if r.get("note") else ""))
                typer.echo(f"{r['step']} ({r['uses']}): {rows} rows from {r['input']} -> {r['output']}{model}: "
                           f"{r['action']}{est}")
            return
        outputs = run_pipeline(file, set_, executor=executor, command=command, only=only or None, start=start)
        for name, v in outputs.items():
            typer.echo(f"{name}: {v.ref}  card: {v.card_path}")
