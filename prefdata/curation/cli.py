"""`prefdata eval noise`: inject known label flips and measure how well the vote finds them."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml


def register(app: typer.Typer) -> None:
    ev = typer.Typer(no_args_is_help=True)

    @ev.command("noise")
    def noise_cmd(dataset: str = typer.Option(..., "--dataset", help="Store ref or file with pairs (HH transcripts ok)."),
                  inject: float = typer.Option(0.2, help="Fraction of train labels to flip on purpose."),
                  seed: int = typer.Option(0),
                  config: Path = typer.Option(None, "--config", help="YAML of NoiseEvalConfig (voters, policy)."),
                  out: Path = typer.Option(None, "--out", help="Also write the report as JSON here.")):
        """Flip a known fraction of labels, vote, and report ROC-AUC, precision/recall and RM accuracy."""
        import json

        from prefdata import io
        from prefdata.curation.noise import NoiseEvalConfig, format_report, run_noise_eval
        from prefdata.errors import ConfigError
        from prefdata.store import quarantine_path

        raw = {}
        if config is not None:
            if not config.is_file():
                raise ConfigError(f"config file not found: {config}")
            raw = yaml.safe_load(config.read_text()) or {}
        raw.update({"inject": inject, "seed": seed})
        try:
            cfg = NoiseEvalConfig(**raw)
        except Exception as e:
            raise ConfigError(f"{config or '--config'}: {e}") from None
        table = io.read(dataset, "pair", on_error="quarantine",
                        quarantine_path=quarantine_path("eval-noise"))
        report = run_noise_eval(table, cfg)
        typer.echo(format_report(report))
        if out:
            out.write_text(json.dumps(report, indent=2))

    app.add_typer(ev, name="eval", help="Measure curation quality.")
