"""`prefdata train <kind>` and `python -m trainers.<kind>`: the same flags for every trainer."""

from __future__ import annotations

import importlib

import typer

KINDS = {"sft": "SFTTrainConfig", "dpo": "DPOTrainConfig", "kto": "KTOTrainConfig", "orpo": "ORPOTrainConfig",
         "reward": "RewardTrainConfig"}


def _run(kind: str, dataset: str, model: str | None, config: str | None, set_: list[str], output_dir: str | None):
    from trainers.common import load_config

    mod = importlib.import_module(f"trainers.{kind}")
    cfg = load_config(getattr(mod, KINDS[kind]), config, set_, dataset=dataset, model=model, output_dir=output_dir)
    card = mod.train(cfg)
    typer.echo(f"model: {card.parent}")
    typer.echo(f"card: {card}")


def _command(kind: str):
    def cmd(dataset: str = typer.Option(..., "--dataset", help="Store ref or .parquet/.jsonl file."),
            model: str = typer.Option(None, "--model", help="Hub id or path (default: embedded SmolLM2)."),
            config: str = typer.Option(None, "--config", help="YAML whose keys are the trainer's config fields."),
            set_: list[str] = typer.Option([], "--set", help="Override a field: --set beta=0.2"),
            output_dir: str = typer.Option(None, "--output-dir")):
        _run(kind, dataset, model, config, set_, output_dir)

    cmd.__doc__ = f"Train with the {kind} trainer on a dataset version."
    return cmd


def build_app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)
    for kind in KINDS:
        app.command(kind)(_command(kind))
    return app


def register(app: typer.Typer) -> None:
    app.add_typer(build_app(), name="train", help="Train policies and reward models on dataset versions.")


def run_from_argv(kind: str, argv: list[str]) -> None:
    """Entry for `python -m trainers.<kind>`: same flags, same error handling as the CLI."""
    from prefdata.cli import main

    main(["train", kind, *argv])
