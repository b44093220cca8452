"""pipelines/compare_losses.yaml end to end on the tiny model (every loss trained, one comparison card
with a table and a PNG), and the holdout cut and the comparison table on their own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from prefdata.testing import run_cli

REPO = Path(__file__).resolve().parents[1]
RUNS = ("dpo", "ipo", "kto", "orpo", "simpo")


def test_holdout_cuts_by_prompt_and_the_two_sides_partition_the_pairs():
    from prefdata.evals.compare import holdout_mask

    prompts = [[{"role": "user", "content": f"q{i % 20}"}] for i in range(60)]  # each prompt 3 times
    t = pa.table({"prompt": prompts})
    m = holdout_mask(t, 0.25, seed=0)
    assert np.array_equal(m, holdout_mask(t, 0.25, seed=0))  # reruns cut the same way
    by_prompt = {}
    for p, h in zip(prompts, m):
        by_prompt.setdefault(p[0]["content"], set()).add(bool(h))
    assert all(len(v) == 1 for v in by_prompt.values())  # a prompt's pairs never straddle the cut
    assert m.sum() == 15 and not np.array_equal(m, holdout_mask(t, 0.25, seed=1))  # 5 of 20 prompts, 3 pairs each
    tiny = pa.table({"prompt": prompts[:3]})
    assert holdout_mask(tiny, 0.01, seed=0).sum() == 1 and holdout_mask(tiny, 0.99, seed=0).sum() == 2


def test_comparison_table_and_plot(tmp_path):
    from prefdata.evals.compare import compare_plot, compare_table
    from prefdata.evals.ranking import RankingEvalConfig, summarize

    cfg = RankingEvalConfig(n_bootstrap=50)
    rc, rr = np.array([-5.0, -6.0, -4.0, -7.0]), np.array([-5.5, -5.0, -4.5, -6.0])
    good = summarize(rc + np.array([1, 2, 1, 2]), rr, rc, rr, cfg)  # every implicit margin > 0
    bad = summarize(rc - 1.0, rr, rc, rr, cfg)
    rows = [{"label": "dpo", "trainer": "dpo", "loss": "sigmoid", "max_steps": 8, "train_loss": 0.61, **good},
            {"label": "kto", **bad}]
    text = compare_table(rows)
    assert "| dpo | dpo / sigmoid | 8 | 0.6100 | 1.000" in text and "| kto | ? / ? | n/a | n/a | 0.000" in text
    png = compare_plot(rows, good["reference_likelihood_accuracy"], tmp_path / "c.png")
    assert png.stat().st_size > 5000


def test_compare_losses_pipeline_end_to_end(tiny_model, capsys):
    sets = ["--set", f"engine.model={tiny_model}", "--set", "steps.pairs.limit=8",
            "--set", "steps.pairs.config.max_tokens=8", "--set", "steps.compare.config.n_bootstrap=20",
            "--set", "steps.train_pairs.config.fraction=0.4", "--set", "steps.heldout_pairs.config.fraction=0.4",
            "--set", "steps.compare.config.win_rate.max_tokens=8", "--set", "steps.compare.config.win_rate.limit=2"]
    for run in RUNS:
        sets += ["--set", f"steps.{run}.config.max_steps=1", "--set", f"steps.{run}.config.max_length=128"]
    code, _, err = run_cli(capsys, "run", REPO / "pipelines" / "compare_losses.yaml", *sets)
    assert code == 0, err
    from prefdata import store

    train, held = store.resolve("compare-train@latest"), store.resolve("compare-heldout@latest")
    n_train, n_held = (store.load(v.ref).num_rows for v in (train, held))
    assert n_held > 0 and n_train + n_held == store.load("compare-rlcd@latest").num_rows
    home = Path(store.home())
    stamps = list(home.glob("**/compare-losses/**/step.json"))
    assert len(stamps) == 1, stamps
    folder = stamps[0].parent
    card = (folder / "README.md").read_text()
    for run in RUNS:
        assert f"| {run} |" in card
    assert "| dpo | dpo / sigmoid | 1 |" in card and "| simpo | dpo / simpo | 1 |" in card
    assert "| kto | kto / kto |" in card and "| orpo | orpo / orpo |" in card
    assert (folder / "compare.png").stat().st_size > 5000 and "compare.png" in card
    metrics = json.loads(stamps[0].read_text())["metrics"]
    assert metrics["pairs"] == n_held and all(0 <= metrics[f"{r}_policy_likelihood"] <= 1 for r in RUNS)
    assert all(0 <= metrics[f"{r}_win_rate"] <= 1 for r in RUNS) and "win rate vs reference" in card
