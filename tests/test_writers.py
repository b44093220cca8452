"""prefdata.writers: CSV exports a spreadsheet cannot run as formulas (issue 24; OWASP's rule against
CSV injection), through `prefdata datasets export` and the writer itself."""

from __future__ import annotations

import csv
import json

from prefdata.testing import run_cli as cli  # (exit code, stdout, stderr)

# ----------------------------------------------------------------------------- CSV formula injection


DANGEROUS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tindent", "\rcr", "safe", "-",
             "a=b"]


def test_csv_export_neutralises_formulas(tmp_path, capsys):
    rows = [{"id": f"r{i}", "prompt": p, "chosen": f"=c{i}", "rejected": "fine", "label_prob": 1.0}
            for i, p in enumerate(DANGEROUS)]
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, err = cli(capsys, "datasets", "import", src, "--name", "csvpairs")
    assert code == 0, err
    out = tmp_path / "x.csv"
    code, _, err = cli(capsys, "datasets", "export", "csvpairs", "--format", "standard", "--out", out)
    assert code == 0, err
    with open(out, newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    prompts = [r["prompt"] for r in got]
    want = ["'" + p if p[:1] in ("=", "+", "-", "@", "\t", "\r") else p for p in DANGEROUS]
    assert prompts == want
    assert [r["chosen"] for r in got] == [f"'=c{i}" for i in range(len(DANGEROUS))]
    assert {r["rejected"] for r in got} == {"fine"}
    # No cell of any column starts with a formula character.
    assert not [v for r in got for v in r.values() if v[:1] in ("=", "+", "-", "@", "\t", "\r")]


def test_csv_writer_leaves_numbers_alone_and_neutralises_headers(tmp_path):
    import pyarrow as pa

    from prefdata.writers import write

    t = pa.table({"=cmd": ["x"], "margin": [-1.5], "n": [-3], "tags": [["=a", "b"]]})
    write(t, tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text(encoding="utf-8")
    header, row = list(csv.reader(text.splitlines()))
    assert header == ["'=cmd", "margin", "n", "tags"]
    assert row[:3] == ["x", "-1.5", "-3"]  # numbers are numbers: a spreadsheet never runs them
    assert json.loads(row[3]) == ["=a", "b"]  # nested values are JSON, which starts with [ or {
