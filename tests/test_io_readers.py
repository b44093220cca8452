"""Readers under hostile input: every bad file is one `error:` line naming file, row and field, exit 1,
never a traceback; the small layout fixes (BOM, content type, CSV lines, HH markers); and a
property-based fuzz of the readers and the schema. See docs/RELIABILITY.md."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefdata import io
from prefdata.errors import PrefdataError
from prefdata.schema import SCHEMAS, validate
from prefdata.testing import run_cli as cli  # the real CLI in-process: (code, stdout, stderr)

PAIR = '{"prompt": "q", "chosen": "good", "rejected": "bad"'




def assert_one_line(code: int, err: str, *needles: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def import_(capsys, path: Path, name: str = "t"):
    return cli(capsys, "datasets", "import", str(path), "--name", name)


# ----------------------------------------------------------------------------- the cases

def _gz_truncated(p: Path) -> None:
    blob = gzip.compress((PAIR + "}\n").encode() * 2000)
    p.write_bytes(blob[: len(blob) // 2])


CASES = {
    # file name -> (writer, words the one line must hold)
    "huge-margin.jsonl": (lambda p: p.write_text(PAIR + ', "margin": 1' + "0" * 400 + "}\n"),
                          ["row 1", "field 'margin'", "out of range"]),
    "big-extra.jsonl": (lambda p: p.write_text(PAIR + f', "extra": {2 ** 70}' + "}\n"),
                        ["row 1", "field 'extra'", "64-bit"]),
    "deep.jsonl": (lambda p: p.write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
                   ["row 1", "nested too deeply"]),
    "deep.json": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), ["nested too deeply"]),
    "truncated.jsonl.gz": (_gz_truncated, ["truncated or corrupt gzip"]),
    "not-gzip.jsonl.gz": (lambda p: p.write_text(PAIR + "}\n"), ["not a gzip file"]),
    "ints.json": (lambda p: p.write_text("[1, 2, 3]"), ["row 1", "must be a JSON object"]),
    "surrogate.jsonl": (lambda p: p.write_text('{"prompt": "a\\ud800", "chosen": "b", "rejected": "c"}\n'),
                        ["row 1", "field 'prompt'", "surrogate"]),
}


@pytest.mark.parametrize("fname", list(CASES))
def test_bad_file_is_one_line(tmp_path, capsys, fname):
    write, needles = CASES[fname]
    p = tmp_path / fname
    write(p)
    code, _, err = import_(capsys, p)
    assert_one_line(code, err, fname, *needles)
    assert not (tmp_path / "prefdata-home" / "datasets" / "t").exists() or \
        not list((tmp_path / "prefdata-home" / "datasets" / "t").glob("v*"))


def test_surrogate_in_a_key_and_in_quarantine(tmp_path, capsys):
    # A bad key is named too, and quarantining a surrogate row writes a readable JSON line.
    p = tmp_path / "k.jsonl"
    p.write_text(PAIR + ', "x\\udc00": 1}\n' + PAIR + "}\n")
    with pytest.raises(PrefdataError, match="column name"):
        io.read(str(p))
    q = tmp_path / "q.jsonl"
    t = io.read(str(p), on_error="quarantine", quarantine_path=q)
    assert t.num_rows == 1
    rec = json.loads(q.read_text(encoding="utf-8"))
    assert "x\udc00" in rec["record"]
    capsys.readouterr()


# ----------------------------------------------------------------------------- smaller items

def test_bom_accepted_in_jsonl_json_and_csv(tmp_path, capsys):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + (PAIR + "}\n").encode())
    (tmp_path / "b.json").write_bytes(bom + ("[" + PAIR + "}]").encode())
    (tmp_path / "c.csv").write_bytes(bom + b"prompt,chosen,rejected\nq,good,bad\n")
    ids = {n: io.read(str(tmp_path / n)).column("id").to_pylist() for n in ("a.jsonl", "b.json", "c.csv")}
    assert ids["a.jsonl"] == ids["b.json"] == ids["c.csv"]
    code, out, err = import_(capsys, tmp_path / "a.jsonl")
    assert code == 0 and "t@v1" in out, err


def test_non_string_content_says_must_be_a_string(tmp_path, capsys):
    p = tmp_path / "n.jsonl"
    p.write_text('{"prompt": [{"role": "user", "content": 5}], "chosen": "b", "rejected": "c"}\n')
    line = assert_one_line(*import_(capsys, p)[::2], "field 'prompt[0].content'", "must be a string, got int")
    assert "empty" not in line


def test_csv_errors_name_the_file_line(tmp_path, capsys):
    # Record 2 starts on line 4: the quoted prompt of record 1 spans lines 2-3.
    p = tmp_path / "m.csv"
    p.write_text('prompt,chosen,rejected\n"two\nlines",a,b\nq,,b\n')
    assert_one_line(*import_(capsys, p)[::2], "m.csv, row 4", "field 'chosen'", "missing")
    p.write_text("prompt,chosen,rejected\nq,a,b\n\nq,a,b,extra\n")
    assert_one_line(*import_(capsys, p)[::2], "m.csv, row 4", "4 cells")


def test_hh_marker_inside_final_answer_is_named(tmp_path, capsys):
    p = tmp_path / "hh.jsonl"
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: sure, as in\n\nHuman: quoted dialogue",
           "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    p.write_text(json.dumps(row) + "\n")
    assert_one_line(*import_(capsys, p)[::2], "field 'chosen'", "final answer itself contains",
                    "Human:")


# ----------------------------------------------------------------------------- fuzz

FIELDS = sorted({f for s in SCHEMAS.values() for f in s.names} | {"instruction", "input", "instances", "x"})
json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 62, max_value=2 ** 80)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
             | st.sampled_from(["\ud800", "\n\nHuman: x", "\n\nAssistant: y", "user", "assistant", ""]))
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["role", "content", "input", "k", "\udc00"]) | st.text(max_size=4), c, max_size=3),
    max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "robot"]),
                                 "content": json_leaf})
field_value = json_value | st.lists(message, max_size=3) | st.text(max_size=12)
text_or_messages = st.text(min_size=1, max_size=8) | st.lists(message, min_size=1, max_size=2)
# Mostly rows that pass the required-field check, so the fuzz reaches the value checks behind it.
base_row = st.one_of(
    st.fixed_dictionaries({"prompt": text_or_messages, "chosen": text_or_messages, "rejected": text_or_messages}),
    st.fixed_dictionaries({"prompt": text_or_messages, "completion": text_or_messages, "label": json_leaf}),
    st.fixed_dictionaries({"prompt": text_or_messages}),
    st.just({}))
rows = st.lists(st.tuples(base_row, st.dictionaries(st.sampled_from(FIELDS), field_value, max_size=3)).map(
    lambda t: {**t[0], **t[1]}), min_size=1, max_size=4)

_DIR = Path(tempfile.mkdtemp(prefix="prefdata-fuzz-"))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read_or_data_error(path: Path):
    try:
        table = io.read(str(path))
    except PrefdataError as e:
        assert "\n" not in str(e), str(e)  # the CLI prints it as one line
        return None
    # What comes out is schema-valid: it survives validation again, unchanged in its ids.
    kind = io.infer_kind(table.column_names)
    assert validate(table, kind).column("id").to_pylist() == table.column("id").to_pylist()
    return table


@FUZZ
@given(rows)
def test_fuzz_schema_validate(data):
    for kind in SCHEMAS:
        try:
            table = validate(data, kind, normalise=io.normalise_row)
        except PrefdataError as e:
            assert "\n" not in str(e), str(e)
            continue
        assert table.num_rows == len(data)


@FUZZ
@given(rows, st.sampled_from(["a.jsonl", "a.json", "a.jsonl.gz"]))
def test_fuzz_json_readers(data, name):
    text = "\n".join(json.dumps(r) for r in data) + "\n" if name != "a.json" else json.dumps(data)
    p = _DIR / name
    p.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    _read_or_data_error(p)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["b.jsonl", "b.json", "b.csv", "b.jsonl.gz"]),
       st.integers(min_value=0, max_value=3000))
def test_fuzz_bytes_and_nesting(blob, name, depth):
    p = _DIR / name
    if depth > 2000:  # deep nesting around a real row
        blob = b'{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + b"[" * depth + b"]" * depth + b"}\n"
    elif depth > 1000 and name.endswith(".gz"):  # a real gzip header, damaged body
        blob = gzip.compress(blob + b'{"prompt": "q"}\n')[: 10 + len(blob) // 2]
    p.write_bytes(blob)
    _read_or_data_error(p)


@FUZZ
@given(st.lists(st.lists(st.text(alphabet='ab,"\n\r []{}:1', max_size=8), min_size=1, max_size=4),
                min_size=1, max_size=5))
def test_fuzz_csv(cells):
    p = _DIR / "c.csv"
    header = "prompt,chosen,rejected,margin,label_prob\n"
    p.write_text(header + "\n".join(",".join(r) for r in cells) + "\n")
    _read_or_data_error(p)


def test_import_allow_empty_from_the_cli(tmp_path, capsys):
    from prefdata import store

    f = tmp_path / "panda.jsonl"
    f.write_text('{"prompt": "q", "chosen": "a real answer", "rejected": ""}\n' + PAIR + "}\n")
    assert_one_line(*import_(capsys, f)[::2], "panda.jsonl, row 1", "rejected", "empty")
    code, out, err = cli(capsys, "datasets", "import", str(f), "--name", "panda", "--allow-empty", "rejected")
    assert code == 0, err
    v = store.resolve("panda@latest")
    rows = store.load_table(str(v.path)).to_pylist()
    assert [r["rejected"][0]["content"] for r in rows] == ["", "bad"]
    assert "--allow-empty rejected" in v.manifest["command"]
    code, _, err = cli(capsys, "datasets", "import", str(f), "--name", "panda", "--allow-empty", "left")
    assert_one_line(code, err, "allow_empty must be one of")
