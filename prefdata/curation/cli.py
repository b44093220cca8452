"""`prefdata eval noise | agreement | gold`: measure curation against injected flips and human judgement."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from prefdata.store.paths import complete_ref


def _config(model, config: Path | None, **fixed):
    """A config model from an optional YAML file plus the CLI's own flags, or one ConfigError line."""
    from prefdata.errors import ConfigError

    raw = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file not found: {config}")
        try:
            raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{config}: expected a mapping of config keys, got {type(raw).__name__}")
    raw.update(fixed)
    try:
        return model(**raw)
    except Exception as e:
        raise ConfigError(f"{config or '--config'}: {' '.join(str(e).split())}") from None


def _read(dataset: str, tag: str):
    from prefdata import io
    from prefdata.store import quarantine_path

    return io.read(dataset, "pair", on_error="quarantine", quarantine_path=quarantine_path(tag))


def _emit(command: str, report: dict, text: str, out: Path | None, as_json: bool) -> None:
    from prefdata.tables import emit_report

    emit_report(f"prefdata.eval.{command}/1", report, text, out, as_json)


def register(app: typer.Typer) -> None:
    ev = typer.Typer(no_args_is_help=True)

    @ev.command("noise")
    def noise_cmd(dataset: str = typer.Option(..., "--dataset", help="Store ref or file with pairs (HH transcripts ok).",
                                           autocompletion=complete_ref),
                  inject: float = typer.Option(0.2, help="Fraction of train labels to flip on purpose."),
                  seed: int = typer.Option(0),
                  config: Path = typer.Option(None, "--config", help="YAML of NoiseEvalConfig (clean: voters, policy)."),
                  out: Path = typer.Option(None, "--out", help="Also write the report as JSON here."),
                  as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
        """Flip a known fraction of labels, vote, and report ROC-AUC (beside length only), the policy's
        precision/recall, and reward-model accuracy on noisy, cleaned, soft and oracle data."""
        from prefdata.curation.noise import NoiseEvalConfig, format_report, run_noise_eval

        cfg = _config(NoiseEvalConfig, config, inject=inject, seed=seed)
        report = run_noise_eval(_read(dataset, "eval-noise"), cfg)
        _emit("noise", report, format_report(report), out, as_json)

    @ev.command("agreement")
    def agreement_cmd(dataset: str = typer.Option(..., "--dataset", help="Store ref or file with pairs.",
                                                  autocompletion=complete_ref),
                      agreement_column: str = typer.Option(..., "--agreement-column",
                                                           help="Column counting the annotators who gave the label."),
                      seed: int = typer.Option(0),
                      config: Path = typer.Option(None, "--config", help="YAML of HumanEvalConfig (clean: voters, policy)."),
                      out: Path = typer.Option(None, "--out", help="Also write the report as JSON here."),
                      as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
        """Does the vote track annotator agreement? Spearman rho, AUC unanimous vs split, unanimous
        pairs the policy flips or drops; beside the length-only baseline."""
        from prefdata.curation.human import HumanEvalConfig, format_agreement, run_agreement

        cfg = _config(HumanEvalConfig, config, seed=seed)
        report = run_agreement(_read(dataset, "eval-agreement"), agreement_column, cfg)
        _emit("agreement", report, format_agreement(report), out, as_json)

    @ev.command("gold")
    def gold_cmd(dataset: str = typer.Option(..., "--dataset", help="Store ref or file with pairs.",
                                             autocompletion=complete_ref),
                 gold: str = typer.Option(None, "--gold", help="Store ref or file of verified pairs (chosen = truly better).",
                                          autocompletion=complete_ref),
                 gold_column: str = typer.Option(None, "--gold-column", help="Or a column of the dataset: 1 where the "
                                                 "stored label is verified right, 0 where wrong, empty where unknown."),
                 seed: int = typer.Option(0),
                 config: Path = typer.Option(None, "--config", help="YAML of HumanEvalConfig (clean: voters, policy)."),
                 out: Path = typer.Option(None, "--out", help="Also write the report as JSON here."),
                 as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
        """Posterior against gold labels: accuracy, estimated vs true noise rate, calibration (ECE), the
        baselines (majority vote, binary Dawid-Skene, each family) and flip vs drop vs soft label. Bad rows
        of either file are quarantined (the path is printed), never a reason to stop."""
        from prefdata.curation.human import HumanEvalConfig, format_gold, run_gold
        from prefdata.errors import ConfigError

        if (gold is None) == (gold_column is None):
            raise ConfigError("eval gold needs one of --gold FILE or --gold-column COLUMN")
        cfg = _config(HumanEvalConfig, config, seed=seed)
        report = run_gold(_read(dataset, "eval-gold"), _read(gold, "eval-gold-verified") if gold else None, cfg,
                          gold_column=gold_column)
        _emit("gold", report, format_gold(report), out, as_json)

    app.add_typer(ev, name="eval", help="Measure curation quality.")
