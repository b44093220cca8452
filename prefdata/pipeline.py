"""YAML pipelines: a file names steps, each step reads an input and commits a store version.

    prefdata run pipelines/quickstart.yaml --set steps.rlcd.config.max_tokens=64

A pipeline file maps 1:1 onto `PipelineSpec` (prefdata/spec.py, which loads and checks it); every step's `config` maps 1:1 onto the pydantic
Config its step type registered. Unknown keys anywhere are errors that name the file and the key.

Resume: each step has a fingerprint (step type, its config, the engine settings that change outputs,
the input's content). A step whose fingerprint is already committed is skipped, and inside a step the
request cache means a killed run regenerates nothing it finished.

A step runs in three parts around one `StepPlan` (what it is, its typed config, its input and
fingerprint): read (`_Run.prepare`), run its shards (`_run_shards`), commit (`_Run.commit`); every
version and artifact it writes records `StepPlan.lineage`. The `run` command is in run_cli.py, `--dry-run`
in dry_run.py, the card's usage and streaming notes in step_card.py.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ValidationError

import prefdata
from prefdata import artifacts, costs, interrupts, progress, quality, step_health
from prefdata.config import fingerprint_dump, fmt_validation
from prefdata.costs import Meter
from prefdata.engines import EngineOverrides, overrides_dict
from prefdata.errors import ConfigError, PrefdataError
from prefdata.executors import ExecutorConfig
from prefdata.redact import redact, redact_obj
from prefdata.spec import (
    PipelineSpec,
    StepSpec,
    load_spec,
    resolve_refs,
    select_steps,
    step_types,
    typed_config,
)
from prefdata.step_card import close_figures, engine_usage, merge_reports, streaming_markdown, usage_markdown
from prefdata.step_health import Counts, Tally
from prefdata.steps import StepResult, StepType, register_step  # noqa: F401  (re-exported for step authors)


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
            raise ConfigError(fmt_validation(self.source_file, f"steps.{self.step.name}.engine", e)) from None

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


@dataclass
class StepPlan:
    """A step made ready to run once its input is read: what it is, the config it runs with (validated
    at load, dumped once here), its input and context, and what identifies its output."""

    step: StepSpec
    stype: StepType
    step_cfg: BaseModel
    table: pa.Table
    ctx: StepContext
    engine_cfg: Any  # an EngineConfig, or None for a step that needs no engine
    fp: str
    parents: list[str]  # the input's ref, then (inside `repeat`) this step's output of the last iteration
    loop: dict  # {"iteration": t} inside `repeat`, else {}
    config: dict  # step_cfg as JSON: lineage records it whole, the fingerprint less its run-only fields
    engine: dict | None  # engine_cfg as JSON, likewise

    def lineage(self, engine_ids: dict, step_keys: dict | None = None, record: dict | None = None,
                own: dict | None = None) -> dict:
        """The one lineage of this step's outputs (unredacted). A side table's (no `step_keys`): its
        input, the step and its config, the fingerprint, iteration and engine. The step's own version or
        artifact adds `step_keys` to its step entry, the engine settings and seeds, `record` (what the
        run measured), and last `own`, the lineage the step itself returned."""
        step = {"name": self.step.name, "uses": self.step.uses, "config": self.config}
        if step_keys is None:
            return {"parents": self.parents[:1], "step": step, "fingerprint": self.fp, **self.loop, **engine_ids}
        engine = None if self.engine is None else {k: v for k, v in self.engine.items() if k != "api_key_env"}
        return {"parents": self.parents, "step": {**step, **step_keys}, "engine_config": engine, **engine_ids,
                "seeds": {"pipeline": self.ctx.seed}, "fingerprint": self.fp, **(record or {}), **self.loop,
                **(own or {})}


def plan_step(ctx: StepContext, stype: StepType, table: pa.Table, previous: Any = None,
              iteration: int | None = None) -> StepPlan:
    """Everything known about a step before it runs: its typed config, engine settings, fingerprint."""
    step_cfg = typed_config(ctx.step, stype)
    engine_cfg = ctx.engine_config() if getattr(step_cfg, "needs_engine", True) else None
    config = step_cfg.model_dump(mode="json")
    engine = engine_cfg.model_dump(mode="json") if engine_cfg is not None else None
    fp = fingerprint(ctx.step, step_cfg, engine_cfg, _table_digest(table), ctx.seed, config=config, engine=engine)
    # Iterations link: a step's output in iteration t names its own output in iteration t-1.
    parents = [ctx.input_ref] + ([previous.ref] if previous is not None else [])
    return StepPlan(step=ctx.step, stype=stype, step_cfg=step_cfg, table=table, ctx=ctx, engine_cfg=engine_cfg,
                    fp=fp, parents=parents, loop={"iteration": iteration} if iteration else {}, config=config,
                    engine=engine)


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
        out = PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(fmt_validation(source, "repeat.carry", e)) from None
    for old, new in zip(spec.steps, out.steps):  # a config the carry left alone stays validated
        new._typed = old._typed
    return out


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
        outputs: dict[str, Any] = {}
        models: dict[str, str] = {}  # model step name -> checkpoint folder, for `step:<name>` in engines/configs
        for step in spec.steps:
            step = step.model_copy(update={
                "engine": EngineOverrides(**resolve_refs(overrides_dict(step.engine), models)) if step.engine else None,
                "config": resolve_refs(step.config, models),
                "output": step.output + (f"-iter{iteration}" if iteration else "")})
            plan = self.prepare(spec, step, outputs, seed=seed, iteration=iteration,
                                previous=(previous or {}).get(step.name))
            out = self.artifact_step(plan, console) if plan.stype.artifact else self.dataset_step(plan, console)
            outputs[step.name] = out
            if isinstance(out, artifacts.Artifact) and out.kind == "model":
                models[step.name] = out.ref
        return outputs

    def prepare(self, spec: PipelineSpec, step: StepSpec, outputs: dict[str, Any], *, seed: int,
                iteration: int | None, previous: Any) -> StepPlan:
        """Read: the step's input (its first `limit` rows), and the plan made from it."""
        from prefdata import store

        quarantine = store.quarantine_path(step.output)
        table, source_ref = read_input(step.input, outputs, spec.on_error, quarantine, step.allow_empty)
        if step.limit is not None:
            table = table.slice(0, step.limit)
        ctx = StepContext(spec=spec, step=step, source_file=self.path, seed=seed, executor=self.executor,
                          executor_config=self.executor_config, _engines=self.engines, _warned=self.warned,
                          input_ref=source_ref, meter=self.meter)
        return plan_step(ctx, step_types()[step.uses], table, previous, iteration)

    def dataset_step(self, plan: StepPlan, console) -> Any:
        """A dataset step: skipped when its fingerprint is committed; else its shards run and commit as
        one version, or nothing is committed when too many requests failed."""
        from prefdata import store

        step, ctx = plan.step, plan.ctx
        done = _find_committed(step.output, plan.fp)
        if done is not None and not step_health.recorded_failures(done):
            console.print(f"[green]✓[/] {step.name}: already committed as {done.ref} (fingerprint {plan.fp}), skipped")
            return done
        if done is not None:  # committed with failed requests: ask for those again
            console.print(f"[yellow]↻[/] {step.name}: {done.ref} had {step_health.recorded_failures(done)} failed "
                          "requests; retrying them (the rest comes from the request cache)")
        with _Sink(store, step.output) as sink:
            run = _run_shards(plan, sink, console)
            if run.usage.get("requests"):
                console.print("  engine: " + ", ".join(f"{k} {v}" for k, v in run.usage.items()))
            if run.cost["billable"]:
                console.print("  " + costs.summary_line(run.cost))
            rows = sink.rows
            # Fails the run (nothing committed) when everything failed, too much failed, or nothing is left.
            step_health.verdict(step.name, ctx.counts, rows, len(plan.table), step.max_failure_rate,
                                run.report.get("drop_reasons"))
            if done is not None and not step_health.improved(ctx.counts, rows, done):
                console.print(f"[yellow]✓[/] {step.name}: still {ctx.counts.failed} failed requests, no better "
                              f"than {done.ref}; kept it")
                return done
            version = self.commit(plan, sink, run)
        failed = f", {ctx.counts.failed} failed requests (rerun to retry)" if ctx.counts.failed else ""
        console.print(f"[green]✓[/] {step.name}: {rows} rows → {version.ref} in {run.elapsed:.1f}s{failed}"
                      + quality.run_line(run.report), soft_wrap=True)
        return version

    def commit(self, plan: StepPlan, sink: _Sink, run: _Shards) -> Any:
        """Commit: each side table, then the step's version naming them, all or none."""
        sections = _card_sections(plan, run)
        engine_ids = {}
        if plan.engine_cfg is not None:
            eng = plan.ctx.engine()
            engine_ids = {"engine": eng.name, "model": eng.model_id}
        lineage = plan.lineage(engine_ids, _dataset_keys(plan), _measured(plan, run), run.first.lineage)
        if run.n_shards > 1 and lineage.get("description"):  # measured again over every shard's summed counts
            lineage["description"] = quality.restate(lineage.get("description"), run.report)
        # Redacted once here, so no URL userinfo, token or key reaches a manifest or card.
        lineage, sections = redact_obj(lineage), redact_obj(sections)
        # A signal inside is held until the block ends: a step's versions are written whole or not at all.
        with interrupts.deferred():
            side_lineage = redact_obj(plan.lineage(engine_ids))
            lineage["side_tables"] = {
                side_name: sink.commit(writer, kind=side_kind, lineage=side_lineage, command=self.command).ref
                for side_name, (side_kind, writer) in sink.sides.items()}
            return sink.commit(sink.main, kind=run.first.kind, lineage=lineage, command=self.command,
                               card_sections=sections, figures=run.first.figures)

    def artifact_step(self, plan: StepPlan, console) -> artifacts.Artifact:
        """A train or eval step: its folder is named by the fingerprint; step.json marks it done."""
        from prefdata import store

        step, stype, ctx = plan.step, plan.stype, plan.ctx
        where = artifacts.folder(store.home(), stype.output, step.output, plan.fp)
        done = artifacts.find_done(where, stype.output)
        if done is not None:
            console.print(f"[green]✓[/] {step.name}: already done as {done.ref} (fingerprint {plan.fp}), skipped")
            return done
        console.print(f"[bold]▶ {step.name}[/] ({step.uses}) on {len(plan.table)} rows from {redact(ctx.input_ref)}")
        artifacts.fresh(where)
        ctx.artifact_dir = where
        t0 = time.time()
        result = stype.run(plan.step_cfg, plan.table, ctx)
        lineage = redact_obj(plan.lineage({}, {"pipeline": ctx.source_file},
                                          {"elapsed_s": round(time.time() - t0, 2), "command": self.command},
                                          result.lineage))
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


@dataclass
class _Shards:
    """What a dataset step's shards produced: the first shard's result (its card sections, figures
    and lineage stand for the step), the reports summed over every shard, the rows `dedup` dropped,
    and what the engines did meanwhile."""

    n_shards: int
    shard_rows: int
    first: StepResult | None = None
    report: dict = field(default_factory=dict)
    n_dups: int = 0
    elapsed: float = 0.0
    usage: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)

    def add(self, k: int, result: StepResult) -> None:
        if self.first is None:
            self.first = result
        else:
            close_figures(result.figures)
        self.report = merge_reports(self.report, result.report or {}) if k else dict(result.report or {})


def _run_shards(plan: StepPlan, sink: _Sink, console) -> _Shards:
    """Run: the step over its input a shard at a time, each shard's tables written to `sink` as it ends."""
    step, table, ctx = plan.step, plan.table, plan.ctx
    shard_rows = (step.shard_rows or ctx.spec.shard_rows) if plan.stype.streaming else max(len(table), 1)
    run = _Shards(n_shards=max(1, -(-len(table) // shard_rows)), shard_rows=shard_rows)
    console.print(f"[bold]▶ {step.name}[/] ({step.uses}) on {len(table)} rows from {redact(ctx.input_ref)}"
                  + (f" in {run.n_shards} shards of {shard_rows}" if run.n_shards > 1 else ""))
    t0 = time.time()
    before = {k: dict(e.stats) for k, e in ctx._engines.items()}
    dedupers: dict[str, Any] | None = {} if step.dedup else None
    bar = (progress.progress_bar(f"{step.name} shards", len(table)) if run.n_shards > 1
           else nullcontext(lambda n=1, note=None: None))
    with bar as advance:
        for k in range(run.n_shards):
            part = table.slice(k * shard_rows, shard_rows) if run.n_shards > 1 else table
            ctx.shard, ctx.shards = k, run.n_shards
            result = plan.stype.run(plan.step_cfg, part, ctx)
            run.add(k, result)
            run.n_dups += _write_shard(result, sink, dedupers)
            advance(len(part))
    run.elapsed = time.time() - t0
    run.usage = engine_usage(ctx._engines, before)
    run.cost = ctx.meter.cost({k: dict(e.stats or {}) for k, e in ctx._engines.items()}, before)
    return run


def _write_shard(result: StepResult, sink: _Sink, dedupers: dict | None) -> int:
    """Write one shard's tables (less rows repeating earlier ones, with `dedup`); return how many were dropped."""
    from prefdata import store

    dropped = 0
    for split, t in result.tables.items():
        if dedupers is not None:
            t, n = dedupers.setdefault(split, store.Deduper()).filter(t)
            dropped += n
        sink.write(split, t)
    for side_name, (side_kind, side_table) in result.side_tables.items():
        sink.write(split="train", table=side_table, side=(side_name, side_kind))
    return dropped


def _dataset_keys(plan: StepPlan) -> dict:
    """What a dataset version's lineage adds to its step entry."""
    step = plan.step
    return {"limit": step.limit, "pipeline": plan.ctx.source_file, "max_failure_rate": step.max_failure_rate,
            "dedup": step.dedup}


def _measured(plan: StepPlan, run: _Shards) -> dict:
    """What a dataset version's lineage records of its run: report, time, engine usage, cost, failures."""
    step, ctx = plan.step, plan.ctx
    report = {**run.report, **({"deduplicated": run.n_dups} if step.dedup else {}),
              **({"shards": run.n_shards, "shard_rows": run.shard_rows} if run.n_shards > 1 else {})}
    cost = {"cost": {"usd": run.cost["usd"], "models": run.cost["models"]}} if run.cost["billable"] else {}
    return {"report": report, "elapsed_s": round(run.elapsed, 2), "engine_usage": run.usage, **cost,
            "failures": step_health.lineage_entry(ctx.counts, step.max_failure_rate), "warnings": list(ctx.warnings)}


def _card_sections(plan: StepPlan, run: _Shards) -> list[tuple[str, str]]:
    """The step's card sections, then the pipeline's: streaming, engine usage, cost, failures, dedup, warnings."""
    step, ctx = plan.step, plan.ctx
    sections = list(run.first.card_sections or [])
    if run.n_shards > 1:
        # The step drew its sections and plots from the shard it saw; the store's own
        # statistics (rows, lengths, duplicates, score plots) cover every row.
        sections = [(f"{title} (first shard)", text) for title, text in sections]
        sections.append(("Streaming", streaming_markdown(run.n_shards, run.shard_rows, len(plan.table), run.report)))
    if run.usage.get("requests"):
        sections.append(("Engine usage", usage_markdown(run.usage)))
    if run.cost["billable"]:
        sections.append(("Cost", costs.card_markdown(run.cost, ctx.meter.prices_version)))
    if ctx.counts.failed:
        sections.append(("Failed requests", step_health.card_markdown(ctx.counts, step.max_failure_rate)))
    if step.dedup:
        sections.append(("Deduplication", (f"`dedup: true` dropped {run.n_dups:,} rows repeating an earlier "
                                           "row's id or content.")))
    if ctx.warnings:
        sections.append(("Warnings", "\n".join(f"- {w}" for w in ctx.warnings)))
    return sections


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
