"""`io.read` checks and converts rows a batch at a time (issue 17): the same table, the same errors and
the same quarantine file whatever `batch_rows`, and Python memory bounded by one batch, not the input."""

from __future__ import annotations

import gc
import json
import tracemalloc
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefdata import io
from prefdata.errors import DataError
from prefdata.schema import validate


def jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prompt_rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Write about topic {i} for a reader."}]}
            for i in range(start, start + n)]


def one_go(rows: list[dict], kind: str) -> object:
    """The reference: every row validated in one call, as `read` did before it went by batches."""
    return validate(rows, kind, normalise=partial(io.normalise_row, allow_empty=()))


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 10_000])
def test_batches_give_the_table_one_go_gives(tmp_path, batch_rows):
    rows = prompt_rows(10)
    rows[4]["topic"] = "maths"  # an extra column that only some rows have
    rows[8]["topic"] = None
    rows[9] = {"instruction": "Sum", "input": "1 2"}  # Alpaca layout, id derived from content
    src = jsonl(tmp_path / "p.jsonl", rows)
    t = io.read(src, batch_rows=batch_rows)
    ref = one_go(rows, "prompt")
    assert t.equals(ref) and t.schema == ref.schema and t.column_names[-3:] == ["topic", "instruction", "input"]
    assert t.column("prompt").num_chunks == 1  # one chunk, as before: the pipeline hashes its Parquet image


@pytest.mark.parametrize("batch_rows", [1, 2, 10_000])
def test_a_pair_further_down_makes_every_row_a_pair(tmp_path, batch_rows):
    # The kind comes from every row's keys, also those of batches not yet checked: row 3 is a pair,
    # so row 1 is a bad pair (no chosen), not a prompt.
    rows = [{"prompt": "q1"}, {"prompt": "q2", "chosen": "a", "rejected": "b"},
            {"prompt": "q3", "chosen": "c", "rejected": "d"}]
    with pytest.raises(DataError) as e:
        io.read(jsonl(tmp_path / "p.jsonl", rows), batch_rows=batch_rows)
    assert str(e.value).endswith("p.jsonl, row 1, field 'chosen': missing")


@pytest.mark.parametrize("values", [
    [1, 2, 3, "four", 5, 6],            # int in one batch, text in another
    ["a", "b", "c", 1, "d", "e"],       # plain text in one batch, mixed (JSON text) in another
    [1, 2, 3, 4.5, 6, 7],               # int64 in one batch, double in another
    [{"a": 1}, {"a": 2}, {"a": 3}, {"b": 1}, {"a": 5}, {"a": 6}],  # structs with other fields
])
def test_an_extra_column_typed_apart_by_batch_comes_out_as_read_whole(tmp_path, values):
    rows = [{**r, "x": v} for r, v in zip(prompt_rows(6), values)]
    t = io.read(jsonl(tmp_path / "p.jsonl", rows), batch_rows=3)
    ref = one_go(rows, "prompt")
    assert t.equals(ref) and t.schema.field("x").type == ref.schema.field("x").type


def test_a_bad_row_in_a_later_batch_names_its_line(tmp_path):
    rows = prompt_rows(9)
    rows[7]["prompt"] = []  # line 9 below: a blank line 3 is skipped but counted
    p = tmp_path / "p.jsonl"
    lines = [json.dumps(r) for r in rows]
    p.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    msgs = set()
    for b in (1, 2, 4, 100):
        with pytest.raises(DataError) as e:
            io.read(str(p), batch_rows=b)
        msgs.add(str(e.value))
    assert len(msgs) == 1 and f"{p}" in msgs.pop()
    with pytest.raises(DataError, match=r"line 9.*prompt|row 9.*prompt"):
        io.read(str(p), batch_rows=2)


def test_malformed_json_anywhere_fails_before_any_row_is_checked(tmp_path):
    # As before batching: the file is parsed through first, so a bad row on line 1 does not hide a
    # broken line 6 (and the same file always gives the same error).
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": ""}) + "\n" + "".join(json.dumps(r) + "\n" for r in prompt_rows(4))
                 + '{"prompt": "unterminated\n')
    with pytest.raises(DataError, match="malformed JSON") as e:
        io.read(str(p), batch_rows=2)
    assert "6" in str(e.value)


def test_quarantine_file_and_warning_do_not_depend_on_batches(tmp_path, capsys):
    rows = prompt_rows(8)
    rows[1]["prompt"] = None
    rows[6]["prompt"] = []
    src = jsonl(tmp_path / "p.jsonl", rows)
    out = {}
    for b in (2, 1000):
        q = tmp_path / f"q{b}.jsonl"
        t = io.read(src, on_error="quarantine", quarantine_path=q, batch_rows=b)
        assert t.num_rows == 6 and t.column("id").to_pylist() == [f"q{i}" for i in (0, 2, 3, 4, 5, 7)]
        err = capsys.readouterr().err
        assert err.count("rows quarantined") == 1 and "2 rows quarantined" in err
        out[b] = [json.loads(line) for line in q.read_text().splitlines()]
    assert out[2] == out[1000] and [r["row"] for r in out[2]] == [2, 7]


def test_parquet_csv_and_json_array_in_batches(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(7)]
    ref = one_go(rows, "pair")
    pq.write_table(ref, tmp_path / "x.parquet")
    (tmp_path / "x.csv").write_text("prompt,chosen,rejected\n" + "".join(f"q{i},a{i},b{i}\n" for i in range(7)))
    (tmp_path / "x.json").write_text(json.dumps({"data": rows}))
    for name in ("x.parquet", "x.csv", "x.json"):
        assert io.read(str(tmp_path / name), batch_rows=3).column("id").to_pylist() == ref.column("id").to_pylist()
    bad = [*rows[:5], {"prompt": "q", "chosen": "a"}, rows[6]]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="row 6") as e:
        io.read(str(tmp_path / "bad.json"), batch_rows=2)
    assert "rejected" in str(e.value)


def _traced_peak(src: str) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        io.read(src, batch_rows=1000)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_python_memory_is_one_batch_not_the_input(tmp_path):
    # tracemalloc sees Python objects (the row dicts), not Arrow's buffers: with batches its peak
    # stays about one batch's worth; one dict per row would make 4x the rows cost about 4x.
    small = jsonl(tmp_path / "s.jsonl", prompt_rows(3_000))
    large = jsonl(tmp_path / "l.jsonl", prompt_rows(12_000))
    _traced_peak(small)  # imports and caches, not the read
    a, b = _traced_peak(small), _traced_peak(large)
    assert b < 1.5 * a, (a, b)
