"""Store reliability, round 3 (issue 24: symlink escapes, consistent tampering, exports into the
store, names with a trailing newline, kind changes, a deleted card), through the real CLI.

Each test drives `prefdata.cli.main` in-process and checks the exit code, a single `error:` line on
stderr and no traceback. Every one fails on the code before the change.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata import store
from test_reliability_store import cli, one_line_error  # the CLI helpers, shared




def pairs_file(path, n: int = 3, tag: str = "a"):
    path.write_text("".join(json.dumps({"prompt": f"question {tag} {i}", "chosen": f"good {tag} {i}",
                                        "rejected": f"bad {tag} {i}"}) + "\n" for i in range(n)))
    return path


def imported(capsys, src, name: str = "ds", *extra: str) -> str:
    code, out, err = cli(capsys, "datasets", "import", str(src), "--name", name, *extra)
    assert code == 0, err
    return out.split()[0]  # "ds@v1  card: …"


def files_under(root) -> set:
    return set(root.rglob("*")) if root.exists() else set()


# ----------------------------------------------------------------------------- symlinks out of the store


def test_commit_refuses_a_dataset_directory_that_is_a_symlink_out_of_the_store(tmp_path, capsys):
    outside = tmp_path / "x"
    outside.mkdir()
    store.datasets_dir().mkdir(parents=True)
    (store.datasets_dir() / "evil").symlink_to(outside)
    code, _, err = cli(capsys, "datasets", "import", str(pairs_file(tmp_path / "pairs.jsonl")), "--name", "evil")
    one_line_error(code, err, "symlink", str(outside), "outside the store")
    assert not any(outside.iterdir())  # nothing written through the link


def test_a_version_replaced_by_a_symlink_is_flagged_by_list_show_and_verify(tmp_path, capsys):
    src = pairs_file(tmp_path / "pairs.jsonl")
    assert imported(capsys, src) == "ds@v1"
    v1 = store.datasets_dir() / "ds" / "v1"
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(v1, elsewhere)  # a perfect copy: every checksum in it still matches
    shutil.rmtree(v1)
    v1.symlink_to(elsewhere)

    code, out, err = cli(capsys, "datasets", "list", "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["versions"]
    assert entry["corrupt"] and "symlink" in entry["reason"] and "outside the store" in entry["reason"]
    assert "ds@v1 is corrupt" in err

    code, _, err = cli(capsys, "datasets", "show", "ds@v1")
    one_line_error(code, err, "ds@v1 is corrupt", "symlink")
    code, _, err = cli(capsys, "datasets", "show", str(v1))  # by path, too
    one_line_error(code, err, "symlink")

    code, out, err = cli(capsys, "datasets", "verify", "ds@v1")
    one_line_error(code, err, "1 of 1 versions corrupt")
    assert out.startswith("CORRUPT  ds@v1") and "symlink" in out
    code, out, err = cli(capsys, "datasets", "verify", "--all")
    one_line_error(code, err, "ds@v1")

    # The next commit is numbered past the link and written at its own place, never through it.
    before = files_under(elsewhere)
    assert imported(capsys, src) == "ds@v2"
    assert files_under(elsewhere) == before
    assert not (store.datasets_dir() / "ds" / "v2").is_symlink()


# ----------------------------------------------------------------------------- consistent tampering


def _tamper_consistently(version_dir) -> None:
    """Rewrite the data file, put its new sha256 in manifest.json and re-sum the manifest."""
    man = json.loads((version_dir / "manifest.json").read_text())
    (rel,) = man["splits"]["train"]["files"]
    data = version_dir / rel
    table = pq.read_table(data)
    rows = table.to_pylist()
    rows[0]["chosen"] = [{**rows[0]["chosen"][-1], "content": "TAMPERED"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), data)
    man["files"][rel] = store.core.sha256_file(data)
    blob = json.dumps(man, indent=2).encode()
    (version_dir / "manifest.json").write_bytes(blob)
    (version_dir / "manifest.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")


def test_consistent_tampering_fails_verify_and_is_not_reused_by_a_re_import(tmp_path, capsys):
    src = pairs_file(tmp_path / "pairs.jsonl")
    imported(capsys, src)
    v1 = store.resolve("ds@v1")
    old_sha = v1.sha
    _tamper_consistently(v1.path)

    code, out, err = cli(capsys, "datasets", "verify", "ds@v1")
    one_line_error(code, err, "1 of 1 versions corrupt")
    assert "content hash" in out and "CORRUPT  ds@v1" in out

    # @sha:<old> no longer hands out the altered rows.
    code, _, err = cli(capsys, "datasets", "export", f"ds@sha:{old_sha[:12]}", "--format", "jsonl",
                       "--out", str(tmp_path / "out.jsonl"))
    one_line_error(code, err, "ds@v1 is corrupt", "content hash")
    assert not (tmp_path / "out.jsonl").exists()

    # Re-importing the original file commits a good version instead of matching the tampered one.
    code, out, err = cli(capsys, "datasets", "import", str(src), "--name", "ds")
    assert code == 0, err
    assert out.split()[0] == "ds@v2"
    assert "ds@v1" in err and "corrupt" in err
    v2 = store.verify_ref("ds@v2")
    assert v2.sha == old_sha
    assert all(r["chosen"][-1]["content"] != "TAMPERED" for r in store.load_table("ds@v2").to_pylist())


def test_re_import_of_a_version_whose_card_was_deleted_commits_a_good_one(tmp_path, capsys):
    src = pairs_file(tmp_path / "pairs.jsonl")
    imported(capsys, src)
    (store.datasets_dir() / "ds" / "v1" / "README.md").unlink()
    code, out, err = cli(capsys, "datasets", "list", "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["versions"]
    assert entry["corrupt"] and "missing file README.md" in entry["reason"]
    assert imported(capsys, src) == "ds@v2"
    store.verify_ref("ds@v2")


# ----------------------------------------------------------------------------- exports into the store


def test_export_refuses_any_path_inside_the_store(tmp_path, capsys):
    imported(capsys, pairs_file(tmp_path / "pairs.jsonl"))
    v1 = store.datasets_dir() / "ds" / "v1"
    data = next((v1 / "data").iterdir())
    before = {p: p.read_bytes() for p in v1.rglob("*") if p.is_file()}
    link = tmp_path / "innocent"
    link.symlink_to(v1 / "data")  # a folder outside that leads in
    for out, fmt in ((data, "parquet"), (v1 / "extra.jsonl", "jsonl"), (link / data.name, "parquet"),
                     (store.datasets_dir() / "new.jsonl", "jsonl")):
        code, _, err = cli(capsys, "datasets", "export", "ds@v1", "--format", fmt, "--out", str(out))
        one_line_error(code, err, "inside the dataset store")
    assert {p: p.read_bytes() for p in v1.rglob("*") if p.is_file()} == before
    assert not (store.datasets_dir() / "new.jsonl").exists()
    code, _, err = cli(capsys, "datasets", "verify", "ds@v1")
    assert code == 0, err
    # Outside the store, export still works.
    code, _, err = cli(capsys, "datasets", "export", "ds@v1", "--format", "jsonl", "--out", str(tmp_path / "o.jsonl"))
    assert code == 0, err


# ----------------------------------------------------------------------------- names


def test_a_name_with_a_trailing_newline_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "datasets", "import", str(pairs_file(tmp_path / "pairs.jsonl")), "--name", "nl\n")
    one_line_error(code, err, "invalid dataset name 'nl\\n'")
    assert not store.datasets_dir().exists() or not any(store.datasets_dir().iterdir())
    code, _, err = cli(capsys, "datasets", "show", "nl\n@v1")
    one_line_error(code, err, "malformed dataset ref")
    code, _, err = cli(capsys, "datasets", "verify", "ds@v1\n")
    one_line_error(code, err)


# ----------------------------------------------------------------------------- kind changes


def test_a_kind_change_under_one_name_is_refused_unless_forced(tmp_path, capsys):
    imported(capsys, pairs_file(tmp_path / "pairs.jsonl"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p {i}"}) + "\n" for i in range(2)))
    code, _, err = cli(capsys, "datasets", "import", str(prompts), "--name", "ds")
    one_line_error(code, err, "ds@v1 holds 'pair' rows", "'prompt'", "--force-kind")
    assert [v.version for v in store.list_versions("ds")] == ["v1"]
    assert store.resolve("ds@latest").manifest["kind"] == "pair"

    assert imported(capsys, prompts, "ds", "--force-kind") == "ds@v2"
    assert store.resolve("ds@latest").manifest["kind"] == "prompt"
    # Same kind again needs no flag.
    prompts.write_text("".join(json.dumps({"prompt": f"q {i}"}) + "\n" for i in range(2)))
    assert imported(capsys, prompts, "ds") == "ds@v3"
