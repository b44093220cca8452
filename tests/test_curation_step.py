"""The clean_labels step's card and side table, bad input writing nothing, and `prefdata eval noise`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from prefdata.errors import DataError
from prefdata.schema import validate


def pairs(n):
    # Equal-length answers: the log length ratio is 0, so length control leaves the votes alone.
    return validate([{"prompt": f"q{i}", "chosen": f"good {i:03d}", "rejected": f"poor {i:03d}"} for i in range(n)], "pair")


def pipeline_file(tmp_path, policy, inp="raw@v1"):
    p = tmp_path / "clean.yaml"
    p.write_text(yaml.safe_dump({"steps": [{"name": "clean", "uses": "clean_labels", "input": inp, "output": "clean",
                                            "config": {"voters": [{"type": "heads"}], "policy": policy}}]}))
    return p


def fake_votes(monkeypatch, votes):
    from prefdata.curation import step as cstep

    monkeypatch.setattr(cstep, "collect_votes", lambda table, cfg, **kw: votes)


def test_card_shows_counts_families_doubtful_pairs_and_figures(tmp_path, monkeypatch):
    from prefdata import pipeline, store

    t = pairs(30)
    store.commit("raw", t)
    rng = np.random.default_rng(0)
    s = np.r_[np.linspace(-4, -2, 4), rng.normal(2, 1, 26)]  # four pairs the voters firmly reject
    heads = {f"heads:bb:linear:{i}": s + 0.1 * rng.normal(size=30) for i in range(3)}
    fake_votes(monkeypatch, {**heads, "rm:other": s + rng.normal(size=30)})
    v = pipeline.run_pipeline(pipeline_file(tmp_path, {"flip_max_prob": 0.1, "drop_prob_below": 0.5}))["clean"]
    card = v.card_path.read_text()
    kept = store.load_table(v.ref)
    n_flipped = sum(kept.column("flipped").to_pylist())
    assert n_flipped > 0 and f"| flipped (this step) | {n_flipped} |" in card
    # Two families (three heads count once), each with its accuracy, beside the length-only row.
    assert "| `heads:bb:linear` | score | 3 |" in card and "| `rm:other` | score | 1 |" in card
    assert "| length only (longer answer wins) |" in card and ("estimated noise rate" in card or "noise rate **unknown**" in card)
    lineage = v.manifest["lineage"]["posterior"]
    assert set(lineage["families"]) == {"heads:bb:linear", "rm:other"} and 0.5 <= lineage["label_accuracy"] <= 1
    lo, hi = lineage["noise_interval"]
    assert lo <= lineage["noise_rate"] + 1e-9 and lineage["noise_rate"] <= hi + 0.05
    # The ten most doubtful pairs: exactly ten table rows, lowest posterior first.
    section = card.split("Ten most doubtful pairs")[1]
    rows = [r for r in section.splitlines() if r.startswith("| 0.") or r.startswith("| 1.")]
    assert len(rows) == 10
    shown = [float(r.split("|")[1]) for r in rows]
    assert shown == sorted(shown)
    for fig in ("posterior_hist", "length_control", "family_agreement"):
        assert (v.path / f"{fig}.png").is_file() and f"{fig}.png" in card
    # Undo information: voter ids on every row, the dropped side table named in the lineage.
    assert json.loads(kept.column("voters")[0].as_py()) == [*heads, "rm:other"]


def test_card_escapes_pipes_in_table_cells(tmp_path, monkeypatch):
    from prefdata import pipeline, store

    t = validate([{"prompt": f"a | b {i}", "chosen": f"x|y {i}", "rejected": f"z {i}"} for i in range(12)], "pair")
    store.commit("raw", t)
    fake_votes(monkeypatch, {"a": np.linspace(-1, 3, 12)})
    v = pipeline.run_pipeline(pipeline_file(tmp_path, {}))["clean"]
    card = v.card_path.read_text()
    assert "a \\| b" in card and "x\\|y" in card
    rows = [r for r in card.split("Ten most doubtful pairs")[1].splitlines() if r.startswith("| 0.") or r.startswith("| 1.")]
    assert rows and all(r.replace("\\|", "").count("|") == 6 for r in rows)  # five cells: no cell was split


@pytest.mark.parametrize("votes,msg", [
    ({"a": np.r_[np.ones(5), np.nan, np.ones(4)]}, "row 6, field 'votes.a'"),
    ({"a": np.ones(10), "b": np.ones(9)}, "voter 'b' scored 9 rows but the dataset has 10 pairs"),
])
def test_bad_votes_write_nothing(tmp_path, monkeypatch, votes, msg):
    from prefdata import pipeline, store

    store.commit("raw", pairs(10))
    fake_votes(monkeypatch, votes)
    with pytest.raises(DataError, match=msg):
        pipeline.run_pipeline(pipeline_file(tmp_path, {}))
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


def learnable(tmp_path, n=80, seed=0):
    rng = np.random.default_rng(seed)
    good = ["thank you, happy to help", "here is a clear careful answer", "sure, glad to explain"]
    bad = ["go away idiot", "no. stupid question", "whatever, figure it out"]
    rows = [{"prompt": f"question {i}", "chosen": f"{good[i % 3]} {rng.integers(100)}",
             "rejected": f"{bad[(i // 3) % 3]} {rng.integers(100)}", "agreement": 3 if i % 4 else 2}
            for i in range(n)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, rows


def tiny_config(tmp_path, tiny_model, policy=None):
    cfg = tmp_path / "noise.yaml"
    voter = {"type": "heads", "backbone": tiny_model, "k": 4, "folds": 4, "l2": 0.1}
    cfg.write_text(yaml.safe_dump({"clean": {"voters": [voter], "policy": policy or {}}, "rm_backbone": voter,
                                   "bootstrap": 200}))
    return cfg, voter


def test_eval_noise_cli_finds_flips_on_learnable_pairs(tmp_path, tiny_model, capsys):
    """Chosen answers are polite, rejected ones rude: even a tiny random backbone separates them, so
    injected flips must rank low. Runs the CLI end to end with a --config file and --out JSON."""
    from prefdata.cli import main

    data, _ = learnable(tmp_path)
    cfg, _ = tiny_config(tmp_path, tiny_model)
    out = tmp_path / "report.json"
    main(["eval", "noise", "--dataset", str(data), "--inject", "0.2", "--seed", "3", "--config", str(cfg),
          "--out", str(out)])
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert f"ROC-AUC posterior {rep['roc_auc']:.3f}" in printed and "held-out pairwise accuracy" in printed
    assert f"length only {rep['roc_auc_length_only']:.3f}" in printed
    assert rep["pairs"] == 80 and rep["train"] + rep["test"] == 80 and 16 <= rep["test"] <= 32
    assert rep["injected"] == round(0.2 * rep["train"])
    assert rep["roc_auc"] > 0.8 and 0 <= rep["precision"] <= 1 and 0 <= rep["recall"] <= 1
    # The policy's own flips, judged against the injected set: well above the 20% base rate.
    assert rep["flipped"]["acted"] > 0 and rep["flipped"]["precision"] >= 0.5  # base rate 0.2
    assert set(rep["rm_heldout_accuracy"]) == {"noisy", "cleaned (policy)", "soft labels (posterior)",
                                              "doubted pairs dropped instead (posterior < 0.5)",
                                              "oracle (injected flips undone)"}
    assert {"posterior", "majority vote", "dawid-skene (binary)"} <= set(rep["baselines_auc"])
    assert rep["remedies_at_cut"]["flip"]["acted"] >= 0 and "drop" in rep["remedies_at_cut"]
    lo, hi = rep["rm_diff_vs_noisy_90ci"]["cleaned (policy)"]
    assert lo <= hi and 0 <= rep["posterior_ece"] <= 1


def test_eval_agreement_cli(tmp_path, tiny_model, capsys):
    from prefdata.cli import main

    data, rows = learnable(tmp_path)
    cfg, voter = tiny_config(tmp_path, tiny_model)
    (tmp_path / "agree.yaml").write_text(yaml.safe_dump({"clean": {"voters": [voter]}}))
    out = tmp_path / "agree.json"
    main(["eval", "agreement", "--dataset", str(data), "--agreement-column", "agreement",
          "--config", str(tmp_path / "agree.yaml"), "--out", str(out)])
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert (rep["pairs"], rep["unanimous"], rep["split"]) == (80, 60, 20)
    assert {"posterior", "no length control", "length only", "majority vote", "dawid-skene (binary)"} <= set(rep["by_score"])
    assert "AUC unanimous vs split" in printed and f"flipped {rep['unanimous_flipped']} unanimous" in printed
    # Labels here are all right and easy: the default policy must not flip a unanimous pair.
    assert rep["unanimous_flipped"] == 0
    from prefdata.cli import main as m2

    with pytest.raises(SystemExit) as e:
        m2(["eval", "agreement", "--dataset", str(data), "--agreement-column", "nope",
            "--config", str(tmp_path / "agree.yaml")])
    assert e.value.code == 1 and "agreement column 'nope'" in capsys.readouterr().err


def test_eval_gold_cli_reports_true_and_estimated_noise(tmp_path, tiny_model, capsys):
    from prefdata.cli import main

    gold, rows = learnable(tmp_path, n=60, seed=1)
    rng = np.random.default_rng(2)
    wrong = rng.random(60) < 0.2
    noisy = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if w else r for r, w in zip(rows, wrong)]
    data = tmp_path / "noisy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in noisy))
    _, voter = tiny_config(tmp_path, tiny_model)
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"clean": {"voters": [voter]}}))
    main(["eval", "gold", "--dataset", str(data), "--gold", str(gold), "--config", str(tmp_path / "g.yaml"), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["matched"] == 60 and rep["true_noise_rate"] == pytest.approx(wrong.mean(), abs=1e-4)
    assert rep["stored labels"]["accuracy"] == pytest.approx(1 - wrong.mean(), abs=1e-4)
    # On this learnable set the posterior's labels beat the stored ones.
    assert rep["posterior"]["accuracy"] > rep["stored labels"]["accuracy"]
    assert 0 <= rep["posterior"]["ece"] <= 1 and rep["policy_flips_right"] >= rep["policy_flips_wrong"]


def test_finetuned_reward_model_family_votes_in_a_pipeline(tmp_path, tiny_model):
    """The cross-fitted LoRA reward model as one family beside the heads, through `prefdata run`."""
    from prefdata import store
    from prefdata.cli import main

    data, _ = learnable(tmp_path, n=24)
    spec = {"steps": [{"name": "clean", "uses": "clean_labels", "input": str(data), "output": "ft-clean",
                       "config": {"voters": [
                           {"type": "heads", "backbone": tiny_model, "k": 2, "folds": 3},
                           {"type": "finetuned_rm", "model": tiny_model, "folds": 2, "max_steps": 3, "batch_size": 4,
                            "max_length": 64}]}}]}
    p = tmp_path / "ft.yaml"
    p.write_text(yaml.safe_dump(spec))
    main(["run", str(p)])
    v = store.resolve("ft-clean@latest")
    fams = v.manifest["lineage"]["posterior"]["families"]
    assert any(f.startswith("ftrm:") for f in fams) and any(f.startswith("heads:") for f in fams)
    assert "ftrm:" in v.card_path.read_text()
