"""Votes computed elsewhere (column families) and the posterior on real-shaped votes: categorical
verdicts with ties and missing votes, adversarial families, honest intervals, the cannot-judge verdict."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml

from prefdata.curation import posterior as P
from prefdata.curation.baselines import binary_dawid_skene
from prefdata.curation.noise import auc, swap
from prefdata.curation.policies import flip
from prefdata.curation.step import CleanLabelsConfig, column_specs, curate
from prefdata.errors import DataError
from prefdata.rewards.columns import ColumnVoter, column_votes
from prefdata.schema import validate


def panel(n=400, noise=0.2, seed=0, accs=(0.85, 0.75, 0.2), members=3, missing=0.0, ties=0.1):
    """Synthetic judge panel with known truth: family f's members vote for the better answer with
    probability accs[f] (0.2: reliably wrong), tie with `ties`, and skip with `missing`."""
    rng = np.random.default_rng(seed)
    right = rng.random(n) >= noise
    cols, fams = [], []
    for f, a in enumerate(accs):
        for _ in range(members):
            truth_vote = np.where(rng.random(n) < a, 1.0, -1.0)
            truth_vote[rng.random(n) < ties] = 0.0
            v = truth_vote * np.where(right, 1, -1)  # label orientation
            v[rng.random(n) < missing] = np.nan
            cols.append(v)
            fams.append(f)
    return np.stack(cols, 1), np.array(fams), right


def family_means(x, fams):
    out = []
    for f in np.unique(fams):
        m = x[:, fams == f]
        c = np.isfinite(m).sum(1)
        with np.errstate(invalid="ignore"):
            out.append(np.where(c > 0, np.nansum(m, 1) / np.maximum(c, 1), np.nan))
    return np.stack(out, 1)


def test_adversarial_family_gets_a_negative_weight_and_is_read_backwards():
    x, fams, right = panel(missing=0.5)
    v = family_means(x, fams)
    post = P.fit(v, ["good", "fair", "liar"], kinds=["verdict"] * 3)
    w = post.weights
    assert w["good"] > 0 and w["fair"] > 0 and w["liar"] < -1.0
    acc = post.family_accuracy
    assert acc["liar"] < 0.3 and acc["good"] > 0.8
    lo, hi = post.extra["accuracy_interval"][2]
    assert lo < acc["liar"] < hi < 0.5
    assert abs(post.voted[0] - 0.875) < 0.05  # 3 members each missing half: 1 - 0.5**3 voted
    assert auc(~right, -post.log_odds) > 0.9
    # Missing votes are marginalised, not counted against the label: a pair nobody voted on keeps the prior.
    none = ~np.isfinite(v).any(1)
    if none.any():
        assert np.allclose(post.label_prob[none], post.alpha, atol=0.02)
    flips = post.label_prob <= 0.1
    assert flips.sum() > 10 and (~right[flips]).mean() >= 0.9


def test_ties_carry_no_evidence():
    v = np.array([[1.0], [0.0], [-1.0]] * 100)
    post = P.fit(v, kinds=["verdict"])
    assert post.contrib[1, 0] == pytest.approx(0.0, abs=1e-9)
    assert post.ties[0] == pytest.approx(1 / 3)


def test_beats_binary_dawid_skene_when_members_disagree_in_strength():
    aucs, ds = [], []
    for seed in range(5):
        x, fams, right = panel(n=150, seed=seed, accs=(0.7, 0.65, 0.35, 0.6), members=5, ties=0.0)
        v = family_means(x, fams)
        aucs.append(auc(~right, -P.fit(v, kinds=["verdict"] * 4).log_odds))
        ds.append(auc(~right, -binary_dawid_skene(v)))
    assert np.mean(aucs) > np.mean(ds)


def test_noise_interval_covers_the_truth_on_synthetic_panels():
    hits, runs = 0, 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        noise = rng.uniform(0.05, 0.35)
        accs = tuple(rng.uniform(0.55, 0.9, size=3))
        x, fams, right = panel(n=int(rng.integers(80, 300)), noise=noise, seed=seed, accs=accs, members=2,
                               missing=float(rng.uniform(0, 0.5)))
        post = P.fit(family_means(x, fams), kinds=["verdict"] * 3, seed=seed)
        lo, hi = post.extra["noise_interval"]
        hits += lo <= (~right).mean() <= hi
        runs += 1
    assert hits / runs >= 0.85


def test_weak_voters_cannot_judge_and_change_no_label():
    rng = np.random.default_rng(0)
    n = 600
    right = rng.random(n) < 0.8
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}",
             "rm": float(rng.normal(0.03 * (1 if r else -1), 1)), "j": int(rng.choice([-1, 1]))}
            for i, r in enumerate(right)]
    table = validate(rows, "pair")
    cfg = CleanLabelsConfig(voters=[{"type": "column", "family": "rm", "columns": ["rm"], "kind": "score"},
                                    {"type": "column", "family": "coin", "columns": ["j"], "kind": "verdict"}])
    kept, dropped, result = curate(table, cfg, progress=False)
    assert not result.posterior.can_judge
    assert "voters near chance" in result.summary()["verdict"]
    from prefdata.curation.step import headline

    assert headline(result, kept, dropped).startswith("Labels NOT judged: the voters are near chance")
    assert dropped.num_rows == 0 and not any(kept.column("flipped").to_pylist())
    lo, hi = result.posterior.extra["noise_interval"]
    assert hi - lo > 0.15  # the interval says the rate is unknown


def rows_with_votes(n=120, seed=0, noise=0.25):
    rng = np.random.default_rng(seed)
    right = rng.random(n) >= noise
    out = []
    for i in range(n):
        s = 1 if right[i] else -1
        vote = lambda a: (s if rng.random() < a else -s)  # noqa: E731
        out.append({"prompt": f"question {i}", "chosen": f"answer one {i}", "rejected": f"answer two {i}",
                    "judge_ab": vote(0.9), "judge_ba": vote(0.85) if rng.random() > 0.3 else None,
                    "rm_c": float(rng.normal(s, 1.0)), "rm_r": 0.0,
                    "ann": ("A" if vote(0.8) > 0 else "B") if i % 2 else ("B" if vote(0.8) > 0 else "A"),
                    "shown_a": "chosen" if i % 2 else "rejected", "verified": None if i % 3 else int(right[i])})
    return out, right


def test_column_kinds_read_into_the_chosen_orientation(tmp_path):
    rows, right = rows_with_votes()
    table = validate(rows, "pair")
    ab = column_votes(table, ColumnVoter(family="ann", columns=["ann"], kind="ab", order="shown_a"))["ann:0"]
    assert ((ab > 0) == right).mean() > 0.7
    sc = column_votes(table, ColumnVoter(family="rm", columns=["rm_c", "rm_r"], kind="scores"))["rm:0"]
    assert np.allclose(sc, [r["rm_c"] for r in rows])
    v = column_votes(table, ColumnVoter(family="j", columns=["judge_ab", "judge_ba"]))
    assert np.isnan(v["j:1"]).sum() == sum(r["judge_ba"] is None for r in rows)
    bad = validate([dict(rows[0], judge_ab=3)], "pair")
    with pytest.raises(DataError) as e:
        column_votes(bad, ColumnVoter(family="j", columns=["judge_ab"]))
    assert "row 1" in str(e.value) and "judge_ab" in str(e.value)


def test_side_file_joins_by_id_and_by_text_in_either_order(tmp_path):
    rows, right = rows_with_votes(n=40)
    table = validate([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows], "pair")
    ids = table.column("id").to_pylist()
    side = tmp_path / "votes.jsonl"
    lines = []
    for i, r in enumerate(rows[:30]):  # the last 10 pairs are absent: missing votes, not an error
        rev = i % 2 == 0
        lines.append({"prompt": r["prompt"], "chosen": r["rejected"] if rev else r["chosen"],
                      "rejected": r["chosen"] if rev else r["rejected"],
                      "v": -r["judge_ab"] if rev else r["judge_ab"]})
    side.write_text("\n".join(json.dumps(x) for x in lines))
    got = column_votes(table, ColumnVoter(family="j", columns=["v"], source=str(side)))["j:0"]
    assert np.array_equal(got[:30], [r["judge_ab"] for r in rows[:30]]) and np.isnan(got[30:]).all()
    by_id = tmp_path / "by_id.csv"
    pl.DataFrame({"id": ids[:20], "v": [r["judge_ab"] for r in rows[:20]]}).write_csv(by_id)
    got = column_votes(table, ColumnVoter(family="j", columns=["v"], source=str(by_id), join="id"))["j:0"]
    assert np.array_equal(got[:20], [r["judge_ab"] for r in rows[:20]]) and np.isnan(got[20:]).all()


def test_flipping_a_pair_turns_its_vote_columns_around():
    rows, _ = rows_with_votes(n=10)
    table = validate(rows, "pair")
    cfg = CleanLabelsConfig(voters=[{"type": "column", "family": "j", "columns": ["judge_ab"]},
                                    {"type": "column", "family": "rm", "columns": ["rm_c", "rm_r"], "kind": "scores"},
                                    {"type": "column", "family": "a", "columns": ["ann"], "kind": "ab", "order": "shown_a"}])
    mask = np.arange(10) % 2 == 0
    before = {f: column_votes(table, s) for f, s in zip("jra", column_specs(cfg))}
    after_t = swap(table, mask, column_specs(cfg))
    after = {f: column_votes(after_t, s) for f, s in zip("jra", column_specs(cfg))}
    for f in before:
        for k in before[f]:
            assert np.allclose(after[f][k], np.where(mask, -1, 1) * before[f][k], equal_nan=True)
    df = pl.from_arrow(table)
    twice = flip(flip(df, pl.lit(pl.Series(mask)), column_specs(cfg)), pl.lit(pl.Series(mask)), column_specs(cfg))
    assert twice.select(["judge_ab", "rm_c", "rm_r", "shown_a"]).equals(df.select(["judge_ab", "rm_c", "rm_r", "shown_a"]))


def test_clean_labels_pipeline_and_eval_gold_with_column_families(tmp_path, capsys):
    from prefdata.cli import main

    rows, right = rows_with_votes(n=200, seed=3)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    voters = [{"type": "column", "family": "judge", "columns": ["judge_ab", "judge_ba"], "kind": "verdict"},
              {"type": "column", "family": "rm", "columns": ["rm_c", "rm_r"], "kind": "scores"},
              {"type": "column", "family": "team", "columns": ["ann"], "kind": "ab", "order": "shown_a"}]
    pipe = {"name": "cj", "steps": [{"name": "clean", "uses": "clean_labels", "input": str(data), "output": "cj",
                                     "config": {"voters": voters}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipe))
    main(["run", str(tmp_path / "p.yaml")])
    from prefdata import store

    v = store.resolve("cj@latest")
    card = (v.path / "README.md").read_text()
    assert "The voters can judge single labels" in card and "binary Dawid-Skene" in card
    title_and_first_line = card.split("---\n", 2)[2].strip().splitlines()[:3]
    assert "Labels cleaned by 3 voter families that can judge them" in title_and_first_line[2]
    t = store.load_table("cj@latest")
    flipped = np.array(t.column("flipped").to_pylist(), dtype=bool)
    ids = t.column("id").to_pylist()
    assert flipped.sum() >= 5
    # The flips are right: compare with the truth by prompt.
    truth = {f"question {i}": r for i, r in enumerate(right)}
    prompts = [p[-1]["content"] for p in t.column("prompt").to_pylist()]
    assert np.mean([not truth[p] for p, f in zip(prompts, flipped) if f]) >= 0.9
    assert len(ids) == 200
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"clean": {"voters": voters}}))
    out = tmp_path / "g.json"
    main(["eval", "gold", "--dataset", str(data), "--gold-column", "verified", "--config", str(tmp_path / "g.yaml"),
          "--out", str(out)])
    rep = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert rep["can_judge"] and rep["baselines_auc_wrong_labels"]["posterior"] > 0.9
    assert {"majority vote", "dawid-skene (binary)", "best single family (hindsight)"} <= set(rep["baselines_auc_wrong_labels"])
    assert rep["remedies_at_cut"]["flip"]["precision"] >= 0.9
    assert "flips" in printed and "ROC-AUC for finding wrong labels" in printed


PANDALM = [{"idx": 0, "instruction": "Fix the grammar.", "input": "he go home", "response1": "He goes home.",
            "response2": "he go home", "annotator1": 1, "annotator2": 1, "annotator3": 1},
           {"idx": 2, "instruction": "Name a colour.", "input": "", "response1": "blue", "response2": "Red is one.",
            "annotator1": 2, "annotator2": 2, "annotator3": 0},
           {"idx": 4, "instruction": "Say hi.", "input": "", "response1": "hi", "response2": "hello",
            "annotator1": 0, "annotator2": 0, "annotator3": 1}]


def test_pandalm_layout_imports_with_annotators_as_vote_columns(tmp_path, capsys):
    from prefdata import store
    from prefdata.cli import main

    f = tmp_path / "pandalm.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in PANDALM * 1))
    main(["datasets", "import", str(f), "--name", "pl", "--layout", "pandalm"])
    assert "1 rows whose majority was a tie left out" in capsys.readouterr().err
    t = store.load_table("pl@latest").to_pylist()
    assert [r["id"] for r in t] == ["pandalm-0", "pandalm-2"]
    assert t[1]["chosen"][-1]["content"] == "Red is one." and t[1]["response1_is"] == "rejected"
    assert (t[1]["annotator1"], t[1]["annotator3"], t[1]["agreement"], t[1]["gold"]) == (1, 0, 2, None)
    assert t[0]["gold"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(PANDALM[0], annotator2=7)))
    with pytest.raises(SystemExit):
        main(["datasets", "import", str(bad), "--name", "pl2", "--layout", "pandalm"])
    err = capsys.readouterr().err
    assert "row 1" in err and "annotator2" in err


def test_voters_that_overrule_most_labels_are_not_trusted_to_flip_them():
    # Judges right on one kind of pair and wrong together on another (adversarial pairs, as in pooled
    # LLMBar subsets): given the truth alone they are correlated, and their consensus overrules most
    # labels. Nothing may be flipped, and the verdict says why.
    rng = np.random.default_rng(0)
    n = 300
    right = rng.random(n) < 0.8
    fooled = rng.random(n) < 0.55
    rows = []
    for i in range(n):
        row = {"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"}
        for k in range(4):
            about_truth = (1 if rng.random() < 0.9 else -1) * (-1 if fooled[i] else 1)
            row[f"j{k}"] = about_truth * (1 if right[i] else -1)
        rows.append(row)
    table = validate(rows, "pair")
    cfg = CleanLabelsConfig(voters=[{"type": "column", "family": f"j{k}", "columns": [f"j{k}"]} for k in range(4)])
    kept, dropped, result = curate(table, cfg, progress=False)
    assert result.posterior.judge_problem == "against the labels"
    assert "voters against the labels" in result.summary()["verdict"]
    assert not any(kept.column("flipped").to_pylist()) and dropped.num_rows == 0
    assert set(kept.column("label_prob").to_pylist()) == {1.0}  # not softened by a posterior it cannot trust


def test_votes_from_another_store_version_join_by_text():
    from prefdata import store

    rows, _ = rows_with_votes(n=30)
    table = validate([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows], "pair")
    # The judged copy lists every other pair the other way round, with its vote turned with it.
    judged = [{"prompt": r["prompt"], "chosen": r["rejected"] if i % 2 else r["chosen"],
               "rejected": r["chosen"] if i % 2 else r["rejected"], "v": -r["judge_ab"] if i % 2 else r["judge_ab"]}
              for i, r in enumerate(rows[:25])]
    store.commit("judged", validate(judged, "pair"), kind="pair")
    got = column_votes(table, ColumnVoter(family="j", columns=["v"], source="judged@latest"))["j:0"]
    assert np.array_equal(got[:25], [r["judge_ab"] for r in rows[:25]]) and np.isnan(got[25:]).all()
    with pytest.raises(Exception) as e:
        column_votes(table, ColumnVoter(family="j", columns=["v"], source="nothing@v9"))
    assert "nothing@v9" in str(e.value)


def test_eval_gold_quarantines_a_bad_gold_row_like_the_dataset_and_words_the_policy(tmp_path, capsys):
    from prefdata.cli import main

    rows, right = rows_with_votes(n=120, seed=4)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    gold = tmp_path / "gold.jsonl"
    verified = [{"prompt": r["prompt"], "chosen": r["chosen"] if ok else r["rejected"],
                 "rejected": r["rejected"] if ok else r["chosen"]} for r, ok in zip(rows, right)]
    verified.append({"prompt": "empty answer", "chosen": "", "rejected": "x"})  # quarantined, not fatal
    gold.write_text("\n".join(json.dumps(r) for r in verified))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"clean": {"voters": [
        {"type": "column", "family": "judge", "columns": ["judge_ab", "judge_ba"]}]}}))
    out = tmp_path / "g.json"
    main(["eval", "gold", "--dataset", str(data), "--gold", str(gold), "--config", str(tmp_path / "g.yaml"),
          "--out", str(out)])
    cap = capsys.readouterr()
    assert "quarantined" in cap.err
    rep = json.loads(out.read_text())
    assert rep["matched"] == 120 and abs(rep["true_noise_rate"] - float((~right).mean())) < 1e-9
    assert "the default policy (flip at posterior <= 0.1)" in cap.out and "policy {}" not in cap.out


def test_group_by_fits_each_group_so_a_family_can_be_right_on_one_and_wrong_on_another():
    # Two sources: the judge is right on "chat" and reliably wrong on "code". Pooled, it is near a
    # coin; per group it is read forwards on one and backwards on the other.
    rng = np.random.default_rng(5)
    rows, right = [], []
    for i in range(400):
        src = "chat" if i % 2 else "code"
        ok = rng.random() >= 0.2
        about_truth = lambda: (1 if rng.random() < 0.85 else -1) * (1 if src == "chat" else -1)  # noqa: E731
        rows.append({"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}", "source": src,
                     **{f"j{k}": about_truth() * (1 if ok else -1) for k in range(3)}})
        right.append(ok)
    right = np.array(right)
    table = validate(rows, "pair")
    voters = [{"type": "column", "family": f"judge{k}", "columns": [f"j{k}"]} for k in range(3)]
    pooled = curate(table, CleanLabelsConfig(voters=voters), progress=False)[2]
    kept, dropped, grouped = curate(table, CleanLabelsConfig(voters=voters, group_by="source"), progress=False)
    assert auc(~right, -grouped.posterior.log_odds) > 0.95 > auc(~right, -pooled.posterior.log_odds) + 0.2
    groups = grouped.summary()["groups"]
    assert groups["chat"]["families"]["judge0"]["weight"] > 0 > groups["code"]["families"]["judge0"]["weight"]
    flipped = np.array(kept.column("flipped").to_pylist(), bool)
    assert flipped.sum() > 30 and (~right[flipped]).mean() >= 0.9
    with pytest.raises(DataError, match="group column 'nope'"):
        curate(table, CleanLabelsConfig(voters=voters, group_by="nope"), progress=False)


def test_a_constant_family_is_left_out_and_one_verdict_family_alone_cannot_judge():
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}", "j": int(rng.choice([1, 1, 1, -1])),
             "always": 1.0} for i in range(80)]
    table = validate(rows, "pair")
    cfg = CleanLabelsConfig(voters=[{"type": "column", "family": "j", "columns": ["j"]},
                                    {"type": "column", "family": "always", "columns": ["always"], "kind": "score"}])
    kept, dropped, result = curate(table, cfg, progress=False)
    post = result.posterior
    # A vote that never changes looked perfect (weight 2e6) and pulled alpha to 1; now it is named and ignored.
    assert post.extra["constant_families"] == ["always"] and post.weights["always"] == 0.0
    assert post.judge_problem == "one family" and "one verdict family only" in result.summary()["verdict"]
    assert not any(kept.column("flipped").to_pylist()) and dropped.num_rows == 0
