"""`prefdata eval agreement` on data where one pair occurs on several rows (PandaLM's test set has
23 such pairs: two models gave the same answers). One pair is one item: scored once, its rows'
annotators pooled, and the report says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefdata.errors import DataError


def _rows():
    # 12 distinct pairs; pairs 0, 1 and 2 occur again further down (pair 2 with a split vote this time).
    base = [{"prompt": f"question {i}", "chosen": f"helpful answer {i}", "rejected": f"rude reply {i}",
             "agreement": 2 if i in (5, 7) else 3} for i in range(12)]
    again = [dict(base[0]), dict(base[1]), dict(base[2], agreement=2)]
    return base[:4] + again[:1] + base[4:8] + again[1:] + base[8:]


def _fake_votes(monkeypatch, seen):
    from prefdata.curation import step as cstep

    def votes(table, cfg, **kw):
        seen.append(table.column("id").to_pylist())
        rng = np.random.default_rng(0)
        return {f"heads:bb:linear:{h}": 2.0 + 0.3 * rng.normal(size=table.num_rows) for h in range(3)}

    monkeypatch.setattr(cstep, "collect_votes", votes)


def test_repeated_pairs_are_one_item_with_pooled_agreement(tmp_path, monkeypatch, capsys):
    from prefdata.cli import main

    rows = _rows()
    assert len(rows) == 15
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    _fake_votes(monkeypatch, seen)
    out = tmp_path / "agree.json"
    main(["eval", "agreement", "--dataset", str(data), "--agreement-column", "agreement", "--out", str(out)])
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    # The voters saw each pair once, in file order of its first row.
    [ids] = seen
    assert len(ids) == len(set(ids)) == 12
    assert (rep["pairs"], rep["rows"]) == (12, 15)
    assert rep["repeated"] == {"rows": 3, "pairs": 3, "mixed": 1}
    # Pair 2 (3 then 2 agreeing) is not unanimous once pooled; pairs 5 and 7 are split as before.
    assert (rep["unanimous"], rep["split"]) == (9, 3)
    assert "3 of 15 rows repeat an earlier row's pair and were merged" in printed and "1 with rows that differ" in printed


def test_no_repeats_no_note(tmp_path, monkeypatch, capsys):
    from prefdata.cli import main

    rows = [r for i, r in enumerate(_rows()) if i not in (4, 9, 10)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _fake_votes(monkeypatch, [])
    main(["eval", "agreement", "--dataset", str(data), "--agreement-column", "agreement", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["pairs"] == rep["rows"] == 12 and rep["repeated"]["rows"] == 0 and rep["unanimous"] == 10


def test_one_id_on_two_different_pairs_is_an_error():
    from prefdata.curation.human import merge_repeated_pairs
    from prefdata.schema import validate

    t = validate([{"id": "p1", "prompt": "q", "chosen": "a", "rejected": "b"},
                  {"id": "p1", "prompt": "q", "chosen": "a", "rejected": "c"}], "pair")
    with pytest.raises(DataError, match=r"id 'p1' names two different pairs \(rows 1 and 2\)"):
        merge_repeated_pairs(t, np.array([3.0, 3.0]), "agreement")


def test_duplicate_vote_id_message_counts_that_id():
    import polars as pl

    from prefdata.curation.policies import _join_votes

    votes = pl.DataFrame({"id": ["a", "a", "b", "b", "b"], "strength_mean": [1.0] * 5})
    from prefdata.curation.policies import VOTE_COLUMNS

    votes = votes.with_columns([pl.lit(0.5).alias(c) for c in VOTE_COLUMNS if c not in votes.columns])
    with pytest.raises(DataError, match=r"vote id 'a' occurs 2 times \(2 ids repeat, 5 rows\)"):
        _join_votes(pl.DataFrame({"id": ["a", "b"]}), votes)
