"""Readers: every accepted layout ends in our schema; bad rows name file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefdata import io
from prefdata.errors import DataError, PrefdataError
from prefdata.schema import PAIR, validate

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_dev.jsonl.gz"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_trl_standard_conversational_and_implicit(tmp_path):
    std = io.read(str(write_jsonl(tmp_path / "s.jsonl", [{"prompt": "hi", "chosen": "good", "rejected": "bad"}])))
    assert std.schema.field("prompt").type == PAIR.field("prompt").type
    row = std.to_pylist()[0]
    assert row["prompt"] == [{"role": "user", "content": "hi"}]
    assert row["chosen"] == [{"role": "assistant", "content": "good"}] and row["label_prob"] == 1.0
    p = [{"role": "user", "content": "hi"}]
    conv = io.read(str(write_jsonl(tmp_path / "c.jsonl", [{"prompt": p, "chosen": p + [{"role": "assistant", "content": "good"}],
                                                            "rejected": [{"role": "assistant", "content": "bad"}]}])))
    assert conv.to_pylist()[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    imp = io.read(str(write_jsonl(tmp_path / "i.jsonl", [{"chosen": p + [{"role": "assistant", "content": "good"}],
                                                           "rejected": p + [{"role": "assistant", "content": "bad"}]}])))
    assert imp.to_pylist()[0]["prompt"] == p
    # Same content, same id, whatever the layout.
    assert std.column("id").to_pylist() == conv.column("id").to_pylist() == imp.column("id").to_pylist()


def test_unpaired_prompts_and_extra_columns(tmp_path):
    u = io.read(str(write_jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "completion": "a", "label": True}])))
    assert u.to_pylist()[0]["label"] is True and u.to_pylist()[0]["weight"] == 1.0
    pr = io.read(str(write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Sum", "input": "1 2", "topic": "math"}])))
    row = pr.to_pylist()[0]
    assert row["prompt"][0]["content"] == "Sum\n\n1 2" and row["topic"] == "math"


def test_parquet_csv_and_hf_folder(tmp_path):
    t = validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")
    pq.write_table(t, tmp_path / "x.parquet")
    assert io.read(str(tmp_path / "x.parquet")).column("id").to_pylist() == t.column("id").to_pylist()
    (tmp_path / "x.csv").write_text("prompt,chosen,rejected\nq,a,b\n")
    assert io.read(str(tmp_path / "x.csv")).column("id").to_pylist() == t.column("id").to_pylist()
    import datasets

    datasets.Dataset(t).save_to_disk(str(tmp_path / "hf"))
    assert io.read(str(tmp_path / "hf")).num_rows == 1
    io.write(t, tmp_path / "round.csv")
    assert io.read(str(tmp_path / "round.csv")).column("id").to_pylist() == t.column("id").to_pylist()


def test_store_ref_input():
    from prefdata import store

    t = validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")
    store.commit("src", t)
    assert io.read("src@v1").num_rows == 1 and io.read("src@latest").num_rows == 1


@pytest.mark.parametrize("content,needles", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', ["row 2", "malformed JSON"]),
    ('{"prompt": "a", "chosen": "b"}\n', ["row 1", "field 'rejected'", "missing"]),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "label_prob": 1.5}\n', ["field 'label_prob'", "[0.0, 1.0]"]),
    ('{"prompt": "a", "chosen": [{"role": "assistant", "content": " "}], "rejected": "c"}\n',
     ["field 'chosen[0].content'", "empty message content"]),
    ('{"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"}\n', ["prompt[0].role"]),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": NaN}\n', ["chosen_score", "finite"]),
])
def test_row_errors_name_file_row_field(tmp_path, content, needles):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DataError) as e:
        io.read(str(f))
    msg = str(e.value)
    assert "bad.jsonl" in msg
    for n in needles:
        assert n in msg, msg


def test_invalid_utf8_and_missing_file(tmp_path):
    f = tmp_path / "u.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"u.jsonl, row 3: invalid UTF-8"):
        io.read(str(f))
    with pytest.raises(PrefdataError, match="file not found"):
        io.read(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        io.read(str(tmp_path / "empty.jsonl"))


def test_quarantine_keeps_good_rows_and_records_bad(tmp_path):
    f = write_jsonl(tmp_path / "mix.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                             {"prompt": "a", "chosen": "b"},
                                             {"prompt": "x", "chosen": "y", "rejected": "z"}])
    q = tmp_path / "q.jsonl"
    t = io.read(str(f), on_error="quarantine", quarantine_path=q)
    assert t.num_rows == 2
    bad = [json.loads(line) for line in q.read_text().splitlines()]
    assert bad == [{"source": str(f), "row": 2, "field": "rejected", "reason": "missing",
                    "record": {"prompt": "a", "chosen": "b"}}]


def test_hh_transcripts_split():
    prompt, chosen, rejected = io.split_hh_pair("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: sure",
                                                "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: no")
    assert prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "help?"}]
    assert chosen == [{"role": "assistant", "content": "sure"}] and rejected[0]["content"] == "no"


@pytest.mark.skipif(not HH.is_file(), reason="shared HH file absent (../shared/data/hh_harmless_dev.jsonl.gz)")
def test_hh_reader_on_shared_file(tmp_path):
    with pytest.raises(DataError, match="row 87, field 'chosen"):
        io.read(str(HH))  # the real file has a handful of rows with an empty final answer
    q = tmp_path / "q.jsonl"
    t = io.read(str(HH), on_error="quarantine", quarantine_path=q)
    quarantined = q.read_text().splitlines()
    assert t.num_rows + len(quarantined) == 1500 and len(quarantined) <= 10
    rows = t.to_pylist()
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    assert sum(len(r["prompt"]) > 1 for r in rows) > 300  # real multi-turn prompts
    assert sum(r["chosen"] != r["rejected"] for r in rows) > 0.95 * len(rows)


# ----------------------------------------------------------------------------- allow_empty

EMPTY_ROWS = [
    {"prompt": "q1", "chosen": "good", "rejected": ""},  # plain string
    {"prompt": "q2", "chosen": [{"role": "assistant", "content": " "}], "rejected": "bad"},  # blank message
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"},  # HH
    {"prompt": "q4", "chosen": "a", "rejected": "", "id": "given-id"},
    {"prompt": "q5", "chosen": "a", "rejected": None},  # missing, not empty: always an error
]
EMPTY = [{"role": "assistant", "content": ""}]


def test_allow_empty_keeps_the_named_side_only(tmp_path):
    from prefdata.schema import content_id

    f = write_jsonl(tmp_path / "e.jsonl", EMPTY_ROWS)
    with pytest.raises(DataError, match="row 1, field 'rejected'"):
        io.read(str(f))  # default unchanged
    q = tmp_path / "q.jsonl"
    t = io.read(str(f), on_error="quarantine", quarantine_path=q, allow_empty="rejected")
    rows = t.to_pylist()
    assert [r["prompt"][0]["content"] for r in rows] == ["q1", "hi", "q4"]
    assert all(r["rejected"] == EMPTY for r in rows)
    # A content-derived id is the id of the real (empty) content, as if read without the stand-in.
    assert rows[0]["id"] == content_id([{"role": "user", "content": "q1"}],
                                       [{"role": "assistant", "content": "good"}], EMPTY)
    assert rows[2]["id"] == "given-id"
    bad = [json.loads(line) for line in q.read_text().splitlines()]
    assert [(b["row"], b["field"]) for b in bad] == [(2, "chosen[0].content"), (5, "rejected")]

    both = io.read(str(f), on_error="quarantine", quarantine_path=tmp_path / "q2.jsonl", allow_empty="both")
    assert both.num_rows == 4 and both.to_pylist()[1]["chosen"] == EMPTY
    assert "\x00" not in json.dumps(both.to_pylist())  # the stand-in never leaks


def test_allow_empty_round_trips_through_the_store_and_bad_values(tmp_path):
    from prefdata import store

    f = write_jsonl(tmp_path / "e.jsonl", EMPTY_ROWS[:1])
    v = store.commit("kept", io.read(str(f), allow_empty="rejected"))
    # A version keeps its empty answers when read again (curation reads versions through io.read).
    assert io.read(v.ref, "pair").to_pylist()[0]["rejected"] == EMPTY
    with pytest.raises(PrefdataError, match="allow_empty must be one of none, chosen, rejected, both"):
        io.read(str(f), allow_empty="left")
    with pytest.raises(PrefdataError, match="allow_empty applies to pairs"):
        io.read(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])), allow_empty="both")


def test_a_version_is_taken_as_stored_exactly_when_the_row_check_would_keep_it(tmp_path):
    """`io.read` of a store version skips the dict per row only when the row check would give the same
    table (types and values); the table then keeps the version's content-hash digest."""
    from functools import partial

    import pyarrow as pa

    from prefdata import store

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": "" if i == 1 else f"bad {i}", "n": i,
             "s": {"a": i, "b": [1.5]}} for i in range(4)]
    kept = io.read(str(write_jsonl(tmp_path / "p.jsonl", rows)), allow_empty="rejected")
    both = ("chosen", "rejected")
    for name, table, fast in (("fast", kept, True),  # an all-null extra column comes back as type null
                              ("slow", kept.append_column("none", pa.nulls(4, pa.string())), False)):
        v = store.commit(name, table)
        got = io.read(v.ref)
        want = validate(store.load_table(v.ref).to_pylist(), "pair", empty_ok=both,
                        normalise=partial(io.normalise_row, allow_empty=both))
        assert got.equals(want) and got.schema == want.schema
        assert (store.core.stored_digest(got) is not None) is fast
