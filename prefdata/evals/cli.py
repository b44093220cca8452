"""`prefdata eval policy` and `prefdata eval ranking`, added to the `eval` group when one exists
(curation mounts `eval noise|agreement|gold`), else to a new one."""

from __future__ import annotations

from pathlib import Path

import typer

from prefdata.store.paths import complete_ref


def _engine(model: str, backend: str):
    from prefdata.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(backend=backend, model=model))


def _emit(command: str, report: dict, text: str, out: Path | None, as_json: bool) -> None:
    from prefdata.tables import emit_report

    emit_report(f"prefdata.eval.{command}/1", report, text, out, as_json)


def policy_cmd(model: str = typer.Option(..., "--model", help="The policy to evaluate (hub id or path)."),
               baseline: str = typer.Option(..., "--baseline", help="The model it is compared with."),
               prompts: str = typer.Option(..., "--prompts", help="Store ref, file (prompts or pairs) or builtin:<set>.",
                                            autocompletion=complete_ref),
               judge: str = typer.Option(..., "--judge", help="Judge model (hub id or path)."),
               judge_method: str = typer.Option("generate", help="generate | logprob"),
               backend: str = typer.Option("transformers", help="Engine backend for all three models."),
               max_tokens: int = typer.Option(256, help="Answer length budget."),
               limit: int = typer.Option(None, help="First n prompts only."),
               seed: int = typer.Option(0),
               out: Path = typer.Option(None, "--out", help="Also write the report (with every answer) as JSON."),
               as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """Win / tie / loss of MODEL's answers against BASELINE's, judged in both orders (a win needs
    both), with a length-controlled win rate and bootstrap intervals."""
    from prefdata.evals.policy import PolicyEvalConfig, format_report, read_prompts, run_policy_eval

    cfg = PolicyEvalConfig(judge_method=judge_method, max_tokens=max_tokens, limit=limit, seed=seed)
    rows = read_prompts(prompts)
    report = run_policy_eval(_engine(model, backend), _engine(baseline, backend), _engine(judge, backend), rows, cfg)
    _emit("policy", report, format_report(report), out, as_json)


def ranking_cmd(model: str = typer.Option(..., "--model", help="The trained policy (hub id or path)."),
                ref: str = typer.Option(..., "--ref", help="Its reference model (the DPO starting point)."),
                dataset: str = typer.Option(..., "--dataset", help="Held-out pairs: store ref or file.",
                                            autocompletion=complete_ref),
                backend: str = typer.Option("transformers", help="Engine backend for both models."),
                limit: int = typer.Option(None, help="First n pairs only."),
                seed: int = typer.Option(0),
                out: Path = typer.Option(None, "--out", help="Also write the report as JSON."),
                as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """DPO implicit-reward ranking accuracy on pairs, beside the policy's and the reference's own
    likelihood ranking accuracy (Chen et al. 2024)."""
    from prefdata import io
    from prefdata.evals.ranking import RankingEvalConfig, format_report, run_ranking_eval

    cfg = RankingEvalConfig(limit=limit, seed=seed)
    rows = io.read(dataset, "pair").select(["prompt", "chosen", "rejected"]).to_pylist()
    report = run_ranking_eval(_engine(model, backend), _engine(ref, backend), rows, cfg)
    _emit("ranking", report, format_report(report), out, as_json)


def register(app: typer.Typer) -> None:
    group = next((g.typer_instance for g in app.registered_groups if g.name == "eval"), None)
    if group is None:
        group = typer.Typer(no_args_is_help=True)
        app.add_typer(group, name="eval", help="Measure data and model quality.")
    group.command("policy")(policy_cmd)
    group.command("ranking")(ranking_cmd)
    from prefdata.evals.judge import register as register_judge

    register_judge(app)  # `eval judge`: one judge or a jury, its biases and accuracy
