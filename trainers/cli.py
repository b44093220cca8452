"""`prefdata train <kind>` and `python -m trainers.<kind>`: the same flags for every trainer.

    prefdata train dpo --dataset quickstart-rlcd@latest --config trainers/configs/quickstart_dpo.yaml
    prefdata train reward --dataset hh-clean@v1 --set use_margin=false --output-dir out/rm

`--config` is a YAML of the trainer's Config fields, `--set key=value` overrides one field (values
parse as YAML), and `--dataset/--model/--output-dir` win over both. `prefdata train fields <kind>`
lists every field with its range and source.

Without `--output-dir` each run is a new model version, `<kind>-<dataset name>@vN` (or `--name`), kept
in `$PREFDATA_HOME/models/trained/` and listed by `prefdata models list`; a rerun adds a version. Either
way the model is written to a temporary folder and renamed into place only when whole
(`trainers.common.atomic_output`).
"""

from __future__ import annotations

import typer

from trainers import registry


def _run(kind: str, dataset: str, model: str | None, config: str | None, set_: list[str], output_dir: str | None,
         name: str | None = None):
    from prefdata import artifacts
    from prefdata.errors import ConfigError
    from prefdata.store import home
    from trainers.common import load_config

    mod = registry.module(kind)
    cfg = load_config(mod.Config, config, set_, dataset=dataset, model=model, output_dir=output_dir)
    if name and cfg.output_dir:
        raise ConfigError("--name names a model version in the store; it cannot go with --output-dir")
    if name:
        artifacts.check_model_name(name)
    card = mod.train(cfg, name=name) if name else mod.train(cfg)
    version = artifacts.version_of(home(), card.parent)
    if version is not None:
        typer.echo(f"model: {version.version_ref}  sha256 {version.manifest.get('content_sha256', '')[:12]}")
        typer.echo(f"path: {card.parent}")
    else:
        typer.echo(f"model: {card.parent}")
    typer.echo(f"card: {card}")


def _command(kind: str):
    def cmd(dataset: str = typer.Option(..., "--dataset", help="Store ref (name@vN) or a .parquet/.jsonl file."),
            model: str = typer.Option(None, "--model", help="Hub id or path (default: embedded SmolLM2)."),
            config: str = typer.Option(None, "--config", help="YAML whose keys are the trainer's config fields."),
            set_: list[str] = typer.Option([], "--set", help="Override a config field: --set beta=0.2"),
            output_dir: str = typer.Option(None, "--output-dir", help="A folder for model, card and curves, "
                                           "instead of a new version in the store."),
            name: str = typer.Option(None, "--name", help="Name of the model version (default: "
                                     f"{kind}-<dataset name>); a rerun adds NAME@v2, v3...")):
        _run(kind, dataset, model, config, set_, output_dir, name)

    cmd.__doc__ = f"Train with the {kind} trainer on a dataset version."
    return cmd


def fields(kind: str = typer.Argument(..., help=" | ".join(registry.KINDS))):
    """List a trainer's config fields: its YAML keys and --set overrides, with ranges and sources."""
    from trainers.common import config_help

    typer.echo(config_help(registry.config_class(kind)))  # an unknown kind: a ConfigError naming the known


def build_app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)
    for kind in registry.KINDS:
        app.command(kind, epilog=f"Config fields: prefdata train fields {kind}")(_command(kind))
    app.command("fields")(fields)
    return app


def register(app: typer.Typer) -> None:
    app.add_typer(build_app(), name="train", help="Train policies and reward models on dataset versions.")


def run_from_argv(kind: str, argv: list[str]) -> None:
    """Entry for `python -m trainers.<kind>`: same flags, same error handling as the CLI (through
    prefdata.entry, not prefdata.cli, which imports this module)."""
    from prefdata.entry import run_app

    root = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @root.callback()
    def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
        pass

    register(root)
    debug = ["--debug"] if "--debug" in argv else []
    run_app(root, [*debug, "train", kind, *[a for a in argv if a != "--debug"]])
