"""`prefdata run --dry-run`: what each step would read and do, without running a model. A step's own
code runs against engines that send nothing (`engines/dry.py`), so the request counts are the step's."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from prefdata import costs, step_health
from prefdata.errors import PrefdataError
from prefdata.pipeline import StepContext, StepPlan, _find_committed, plan_step, read_input
from prefdata.spec import PipelineSpec, step_types


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
        ctx = StepContext(spec=spec, step=step, source_file=source, seed=spec.seed, executor="local",
                          executor_config=None, _engines={}, _warned=set(), input_ref=ref, meter=None)
        plan = plan_step(ctx, stype, table)
        row["model"] = getattr(plan.engine_cfg, "model", None)
        done = None if stype.artifact else _find_committed(step.output, plan.fp)
        if done is not None and not step_health.recorded_failures(done):
            row["action"] = f"skip: already committed as {done.ref}"
        else:
            pending.add(step.name)
            if not stype.artifact and plan.engine_cfg is not None:
                row.update(_count_requests(plan))
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


def _count_requests(plan: StepPlan) -> dict:
    """Run the step's own code against dry engines (`engines/dry.py`): the requests it would send, the
    cache's hits, and for priced models the cost bound (prompt characters / 4, max_tokens per answer)."""
    engines = _DryEngines()
    ctx = dataclasses.replace(plan.ctx, _engines=engines, _warned=set())
    note = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            plan.stype.run(plan.step_cfg, plan.table, ctx)
    except Exception as e:  # noqa: BLE001 - a step may stop on placeholder answers; the counts so far stand
        note = f"the step stopped on the placeholder answers ({type(e).__name__}); counts are up to there"
    sent = sum(len(e.backend.sent) for e in engines.values())
    hits = sum(e.cache.hits for e in engines.values())
    scored = sum(e.backend.scored for e in engines.values())
    usd = 0.0
    priced = False
    prices, _ = costs.load_prices(plan.ctx.spec.prices)
    for e in engines.values():
        price = costs.price_for(prices, e.backend.cfg.model)
        if price is None or not e.backend.sent:
            continue
        priced = True
        usd += price.usd(sum(costs._prompt_chars(r) for r, _ in e.backend.sent) / 4,
                         sum(p.max_tokens for _, p in e.backend.sent))
    return {"requests": sent, "cached": hits, "scored": scored, "usd": round(usd, 4) if priced else None,
            "note": note}
