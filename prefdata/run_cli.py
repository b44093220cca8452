"""`prefdata run`: run a pipeline file (prefdata/pipeline.py), or say what each step would do.

    prefdata run pipelines/quickstart.yaml --set steps.rlcd.config.max_tokens=64
    prefdata run pipelines/quickstart.yaml --only rlcd --dry-run
"""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from prefdata.config import read_yaml
from prefdata.dry_run import dry_run
from prefdata.errors import ConfigError
from prefdata.pipeline import run_pipeline
from prefdata.redact import redact
from prefdata.spec import load_spec, select_steps


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
        command = command_line(file, set_, executor, only, start)
        raw = read_yaml(file)
        if isinstance(raw, dict) and "self_reward_loop" in raw:
            raise ConfigError(f"{file}: the self_reward_loop format is gone; the loop is an ordinary pipeline "
                              "now (steps + `repeat:`), see pipelines/self_reward_loop.yaml")
        if dry:
            spec = select_steps(load_spec(file, set_), only, start, str(file))
            for r in dry_run(spec, str(file)):
                typer.echo(dry_line(r))
            return
        outputs = run_pipeline(file, set_, executor=executor, command=command, only=only or None, start=start)
        for name, v in outputs.items():
            typer.echo(f"{name}: {v.ref}  card: {v.card_path}")


def command_line(file: Path, set_: list[str], executor: str | None, only: list[str], start: str | None) -> str:
    """The command as lineage records it: rebuilt from the parsed options (not sys.argv, which is the
    host's when called in-process), and redacted, so a URL with a password or a key pasted on the
    command line is never recorded."""
    args = ([str(file)] + [f"--set={o}" for o in set_] + ([f"--executor={executor}"] if executor else [])
            + [f"--only={o}" for o in only] + ([f"--from={start}"] if start else []))
    return redact("prefdata run " + " ".join(shlex.quote(a) for a in args))


def dry_line(r: dict) -> str:
    """One step of `--dry-run` (a row of pipeline.dry_run) as one line."""
    rows = "?" if r["rows"] is None else r["rows"]
    model = f", model {r['model']}" if r.get("model") else ""
    est = ""
    if r.get("requests") is not None:
        est = (f"; would send up to {r['requests']} requests ({r['cached']} answered by the cache"
               + (f", {r['scored']} scorings" if r["scored"] else "") + ")"
               + (f", at most ${r['usd']:.4f}" if r.get("usd") is not None else "")
               + (f"; {r['note']}" if r.get("note") else ""))
    return f"{r['step']} ({r['uses']}): {rows} rows from {r['input']} -> {r['output']}{model}: {r['action']}{est}"
