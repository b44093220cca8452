"""The clean_labels step's card and side table, bad input writing nothing, and `prefdata eval noise`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from prefdata.errors import DataError
from prefdata.schema import validate


def pairs(n):
    return validate([{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)], "pair")


def pipeline_file(tmp_path, policy, inp="raw@v1"):
    p = tmp_path / "clean.yaml"
    p.write_text(yaml.safe_dump({"steps": [{"name": "clean", "uses": "clean_labels", "input": inp, "output": "clean",
                                            "config": {"voters": [{"type": "heads"}], "policy": policy}}]}))
    return p


def fake_votes(monkeypatch, votes):
    from prefdata.curation import step as cstep

    monkeypatch.setattr(cstep, "collect_votes", lambda table, cfg, **kw: votes)


def test_card_shows_counts_voters_disputed_pairs_and_figures(tmp_path, monkeypatch):
    from prefdata import pipeline, store

    t = pairs(30)
    store.commit("raw", t)
    s = np.linspace(-3, 3, 30)
    fake_votes(monkeypatch, {"a": s, "b": 2 * s + np.sin(np.arange(30)), "c": s + np.cos(np.arange(30))})
    v = pipeline.run_pipeline(pipeline_file(tmp_path, {"flip_below": 1.0, "drop_abs_below": 0.2}))["clean"]
    card = v.card_path.read_text()
    kept = store.load_table(v.ref)
    n_flipped = sum(kept.column("flipped").to_pylist())
    assert n_flipped > 0 and f"| flipped (this step) | {n_flipped} |" in card
    dropped = store.load_table("clean-dropped@v1")
    assert f"| dropped | {dropped.num_rows} |" in card and "| dropped: ambiguous: |strength| < 0.2 |" in card
    assert "3 voters: `a`, `b`, `c`" in card and "Mean pairwise correlation" in card
    # The ten most disputed pairs: exactly ten table rows, weakest first.
    section = card.split("Ten most disputed pairs")[1]
    rows = [r for r in section.splitlines() if r.startswith("| -") or r.startswith("| 0") or r.startswith("| 1")]
    assert len(rows) == 10
    shown = [float(r.split("|")[1]) for r in rows]
    assert shown == sorted(shown)
    for fig in ("strength_hist", "strength_ucurve", "voter_agreement"):
        assert (v.path / f"{fig}.png").is_file() and f"{fig}.png" in card
    # Undo information: voter ids on every row, the dropped side table named in the lineage.
    assert json.loads(kept.column("voters")[0].as_py()) == ["a", "b", "c"]
    assert v.manifest["lineage"]["side_tables"]["dropped"] == "clean-dropped@v1"


@pytest.mark.parametrize("votes,msg", [
    ({"a": np.r_[np.ones(5), np.nan, np.ones(4)]}, "row 6, field 'votes.a'"),
    ({"a": np.ones(10), "b": np.ones(9)}, "voter 'b' scored 9 rows but the dataset has 10 pairs"),
])
def test_bad_votes_write_nothing(tmp_path, monkeypatch, votes, msg):
    from prefdata import pipeline, store

    store.commit("raw", pairs(10))
    fake_votes(monkeypatch, votes)
    with pytest.raises(DataError, match=msg):
        pipeline.run_pipeline(pipeline_file(tmp_path, {"flip_below": 0.0}))
    assert [v.name for v in store.list_versions()] == ["raw"]


def test_no_pairs_is_an_error_before_any_model_loads(tmp_path):
    from prefdata import pipeline, store
    from prefdata.curation.step import CleanLabelsConfig, collect_votes

    # The heads voter would need a backbone; the empty check comes first, so none is loaded.
    with pytest.raises(DataError, match="hh@v2: the dataset has no pairs to vote on"):
        collect_votes(pairs(3).slice(0, 0), CleanLabelsConfig(), source="hh@v2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):  # a file is refused already by the reader
        pipeline.run_pipeline(pipeline_file(tmp_path, {}, inp=str(empty)))
    assert not store.list_versions()


def test_eval_noise_cli_finds_flips_on_learnable_pairs(tmp_path, tiny_model, capsys):
    """Chosen answers are polite, rejected ones rude: even a tiny random backbone separates them, so
    injected flips must rank low. Runs the CLI end to end with a --config file and --out JSON."""
    from prefdata.cli import main

    rng = np.random.default_rng(0)
    good = ["thank you, happy to help", "here is a clear careful answer", "sure, glad to explain"]
    bad = ["go away idiot", "no. stupid question", "whatever, figure it out"]
    rows = [{"prompt": f"question {i}", "chosen": f"{good[i % 3]} {rng.integers(100)}",
             "rejected": f"{bad[(i // 3) % 3]} {rng.integers(100)}"} for i in range(80)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "noise.yaml"
    voter = {"type": "heads", "backbone": tiny_model, "k": 4, "folds": 4, "l2": 0.1}
    cfg.write_text(yaml.safe_dump({"clean": {"voters": [voter], "policy": {"flip_bottom_q": 0.2}},
                                   "rm_backbone": voter}))
    out = tmp_path / "report.json"
    main(["eval", "noise", "--dataset", str(data), "--inject", "0.2", "--seed", "3", "--config", str(cfg),
          "--out", str(out)])
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert f"ROC-AUC {rep['roc_auc']:.3f}" in printed and "held-out pairwise accuracy" in printed
    assert (rep["pairs"], rep["test"], rep["train"], rep["injected"]) == (80, 24, 56, 11)
    assert rep["roc_auc"] > 0.8 and 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1
    assert set(rep["rm_heldout_accuracy"]) == {"noisy", "flipped-clean", "dropped-clean", "oracle (injected flips undone)"}
