"""Eval steps through `prefdata run`: eval_rm_accuracy and eval_noise write a report folder named by
the step's fingerprint, with the numbers in step.json and the card."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prefdata import store
from prefdata.schema import validate
from prefdata.testing import run_cli as cli  # the real CLI in-process: (code, stdout, stderr)


def pairs(n, swap=False):
    rows = [{"prompt": f"question {i}?", "chosen": f"a careful answer number {i}" * (1 + i % 3),
             "rejected": f"no {i}"} for i in range(n)]
    if swap:
        rows = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    return validate(rows, "pair")


def report(out: str, step: str) -> dict:
    line = next(x for x in out.splitlines() if x.startswith(f"{step}: "))
    return json.loads((Path(line.split(": ", 1)[1].split("  card: ")[0]) / "step.json").read_text())


def test_rm_accuracy_of_a_reward_model_flips_with_the_labels(tiny_model, tmp_path, capsys):
    # A reward model trained by the pipeline, then scored on the pairs and on the same pairs swapped:
    # with no ties the two accuracies add up to 1, whatever the (random) model prefers.
    store.commit("fw-pairs", pairs(12), kind="pair")
    store.commit("fw-swapped", pairs(12, swap=True), kind="pair")
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"engine": {"backend": "transformers", "model": tiny_model}, "steps": [
        {"name": "rm", "uses": "train_reward", "input": "fw-pairs@v1", "output": "fw-rm",
         "config": {"max_steps": 1, "max_length": 64, "eval_fraction": 0, "use_margin": False}},
        {"name": "acc", "uses": "eval_rm_accuracy", "input": "fw-pairs@v1", "output": "fw-acc",
         "config": {"model": "step:rm", "max_length": 64}},
        {"name": "acc_swapped", "uses": "eval_rm_accuracy", "input": "fw-swapped@v1", "output": "fw-acc-swapped",
         "config": {"model": "step:rm", "max_length": 64}}]}))
    code, out, err = cli(capsys, "run", p)
    assert code == 0, err
    a, b = report(out, "acc"), report(out, "acc_swapped")
    assert a["metrics"]["pairs"] == 12 and a["lineage"]["parents"] == ["fw-pairs@v1"]
    assert abs(a["metrics"]["pairwise_accuracy"] + b["metrics"]["pairwise_accuracy"] - 1.0) < 1e-9
    rm_ref = next(x for x in out.splitlines() if x.startswith("rm: ")).split(": ", 1)[1].split("  card: ")[0]
    assert a["lineage"]["reward_model"] == rm_ref  # `model: step:rm` named the model the pipeline trained
    card = (Path(a["card_path"])).read_text()
    assert "pairwise accuracy" in card and "fw-pairs@v1" in card


def test_eval_noise_step_reports_injected_flip_recovery(tiny_model, tmp_path, capsys):
    store.commit("noisy-in", pairs(40), kind="pair")
    heads = {"type": "heads", "backbone": tiny_model, "k": 2, "folds": 2, "max_length": 64}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"steps": [
        {"name": "noise", "uses": "eval_noise", "input": "noisy-in@v1", "output": "noise-eval",
         "config": {"inject": 0.2, "bootstrap": 20, "clean": {"voters": [heads]}, "rm_backbone": heads}}]}))
    code, out, err = cli(capsys, "run", p)
    assert code == 0, err
    r = report(out, "noise")
    assert r["metrics"]["pairs"] == 40 and r["metrics"]["injected"] > 0 and 0 <= r["metrics"]["roc_auc"] <= 1
    assert "ROC-AUC" in (Path(r["card_path"])).read_text()
    code, _, err = cli(capsys, "run", p)  # the same inputs: found by fingerprint, not rerun
    assert code == 0 and "already done" in err


def test_eval_ranking_step_against_a_dpo_policy_and_its_swap(tiny_model, tmp_path, capsys):
    """`eval_ranking` with `model: step:dpo`: on the same pairs swapped, each accuracy is one minus the
    other (no ties with float log-probs), and the reference's likelihood accuracy is the tiny base's."""
    store.commit("rk-pairs", pairs(10), kind="pair")
    store.commit("rk-swapped", pairs(10, swap=True), kind="pair")
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"engine": {"backend": "transformers", "model": tiny_model}, "steps": [
        {"name": "dpo", "uses": "train_dpo", "input": "rk-pairs@v1", "output": "rk-dpo",
         "config": {"max_steps": 1, "max_length": 64, "learning_rate": 1.0e-3, "eval_fraction": 0}},
        {"name": "rank", "uses": "eval_ranking", "input": "rk-pairs@v1", "output": "rk-rank",
         "config": {"model": "step:dpo", "n_bootstrap": 50}},
        {"name": "rank_swapped", "uses": "eval_ranking", "input": "rk-swapped@v1", "output": "rk-rank-sw",
         "config": {"model": "step:dpo", "n_bootstrap": 50}}]}))
    code, out, err = cli(capsys, "run", p)
    assert code == 0, err
    a, b = report(out, "rank")["metrics"], report(out, "rank_swapped")["metrics"]
    assert a["pairs"] == b["pairs"] == 10
    for k in ("implicit_reward_accuracy", "policy_likelihood_accuracy", "reference_likelihood_accuracy"):
        assert abs(a[k] + b[k] - 1.0) < 1e-9, k
    assert "Ranking accuracy" in Path(report(out, "rank")["card_path"]).read_text()
