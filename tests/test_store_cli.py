"""The store through the real CLI: issue 12 (items 1, 5, 6 and the store's part of 9) and issue 24
(symlink escapes, consistent tampering, exports into the store, names with a trailing newline, kind
changes, a deleted card).

Each test drives `prefdata.cli.main` in-process (or, where processes must race or die, real
subprocesses) and checks the exit code, a single stderr line, and no traceback. Every issue-24 test
fails on the code before its change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from prefdata import store
from prefdata.errors import DataError, PrefdataError
from prefdata.schema import validate


def cli(capsys, *args) -> tuple[int, str, str]:
    from prefdata.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def rows(n: int, tag: str = "a") -> list[dict]:
    return [{"prompt": f"question {tag} {i}", "chosen": f"good {tag} {i}", "rejected": f"bad {tag} {i}"}
            for i in range(n)]


def write_jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


BAD_ROW = {"prompt": "q", "chosen": ""}  # empty chosen: quarantined


def files_under(root) -> set:
    return {p for p in root.rglob("*")} if root.exists() else set()


# ----------------------------------------------------------------------------- names and paths


def test_import_with_quarantine_never_writes_over_its_input(tmp_path, capsys):
    victim = tmp_path / "victim.jsonl"
    write_jsonl(victim, rows(1) + [BAD_ROW])
    before = victim.read_bytes()
    code, _, err = cli(capsys, "datasets", "import", str(victim), "--name", str(victim)[:-len(".jsonl")],
                       "--on-error", "quarantine")
    one_line_error(code, err, "invalid dataset name")
    assert victim.read_bytes() == before
    assert not (store.home() / "quarantine").exists()


def test_dotdot_name_writes_nothing_outside_the_home(tmp_path, capsys):
    src = tmp_path / "in" / "pairs.jsonl"
    src.parent.mkdir()
    write_jsonl(src, rows(1) + [BAD_ROW])
    before = files_under(tmp_path)
    code, _, err = cli(capsys, "datasets", "import", str(src), "--name", "../../X", "--on-error", "quarantine")
    one_line_error(code, err, "invalid dataset name '../../X'")
    assert files_under(tmp_path) == before  # nothing anywhere, not even inside the home


def test_pipeline_output_names_are_checked_before_any_step_runs(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    write_jsonl(src, rows(2) + [BAD_ROW])
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({
        "engine": {"backend": "transformers", "model": str(tmp_path / "no-model")}, "on_error": "quarantine",
        "steps": [{"name": "first", "uses": "rlcd", "input": str(src), "output": "fine"},
                  {"name": "second", "uses": "rlcd", "input": "step:first", "output": "../../X"}]}))
    before = files_under(tmp_path)
    code, _, err = cli(capsys, "run", str(pipe))
    # The first step would fail on its missing model; the bad name of the second must be found first.
    one_line_error(code, err, "invalid dataset name '../../X'")
    assert files_under(tmp_path) == before


def test_loop_name_cannot_leave_the_home(tmp_path, capsys):
    loop = tmp_path / "loop.yaml"
    # The loop is an ordinary pipeline with `repeat:`; its per-iteration names are checked up front too.
    loop.write_text(yaml.safe_dump({
        "engine": {"backend": "transformers", "model": str(tmp_path / "no-model")},
        "repeat": {"times": 2, "carry": {"model": "step:dpo"}},
        "steps": [{"name": "gen", "uses": "self_reward", "input": str(tmp_path / "missing.jsonl"), "output": "../../../X"},
                  {"name": "dpo", "uses": "train_dpo", "input": "step:gen", "output": "loop-dpo"}]}))
    before = files_under(tmp_path)
    code, _, err = cli(capsys, "run", str(loop))
    one_line_error(code, err, "invalid dataset name '../../../X'")
    assert files_under(tmp_path) == before


def test_quarantine_files_are_named_per_run_and_never_overwritten(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    for tag in ("a", "b"):
        write_jsonl(src, rows(2, tag) + [{**BAD_ROW, "prompt": f"bad {tag}"}])
        code, _, err = cli(capsys, "datasets", "import", str(src), "--name", "ds", "--on-error", "quarantine")
        assert code == 0, err
    files = sorted((store.home() / "quarantine").iterdir())
    assert len(files) == 2 and all(f.name.startswith("ds-") and f.suffix == ".jsonl" for f in files)
    assert {json.loads(f.read_text())["record"]["prompt"] for f in files} == {"bad a", "bad b"}
    # Within one process, two paths for one name still differ.
    assert store.quarantine_path("ds") != store.quarantine_path("ds")


def test_safe_path_refuses_anything_outside_the_home(tmp_path):
    assert store.safe_path("quarantine", "x.jsonl") == store.home().resolve() / "quarantine" / "x.jsonl"
    assert store.named_path("models/loops", "run1") == store.home().resolve() / "models" / "loops" / "run1"
    for parts in [("..", "x"), ("a/../../x",), (str(tmp_path / "abs"),), ("",)]:
        with pytest.raises(PrefdataError):
            store.safe_path(*parts)
    store.home().mkdir(parents=True)
    (store.home() / "link").symlink_to(tmp_path)
    with pytest.raises(PrefdataError, match="leaves the store"):
        store.safe_path("link", "x")
    with pytest.raises(PrefdataError, match="invalid dataset name"):
        store.named_path("models/loops", "../x")
    with pytest.raises(PrefdataError, match="invalid dataset name"):
        store.quarantine_path("/etc/passwd")


# ----------------------------------------------------------------------------- integrity


def _commit(name: str, n: int, tag: str = "a") -> store.Version:
    return store.commit(name, validate(rows(n, tag), "pair"))


def test_one_corrupt_manifest_breaks_only_its_version(tmp_path, capsys):
    for tag in ("a", "b", "c"):
        _commit("ds", 3, tag)
    _commit("other", 2)
    man = store.datasets_dir() / "ds" / "v2" / "manifest.json"
    data = bytearray(man.read_bytes())
    data[0] ^= 0xFF
    man.write_bytes(bytes(data))

    code, out, err = cli(capsys, "datasets", "list")
    assert code == 0 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == [ln for ln in err.splitlines() if "ds@v2" in ln]
    assert len(err.strip().splitlines()) == 1 and "corrupt" in err
    assert all(r in out for r in ("ds@v1", "ds@v3", "other@v1", "CORRUPT"))

    code, out, err = cli(capsys, "datasets", "show", "ds@v1")
    assert code == 0 and "3 rows" in out, err
    one_line_error(*cli(capsys, "datasets", "show", "ds@v2")[::2], "ds@v2", "does not parse")

    src = tmp_path / "new.jsonl"
    write_jsonl(src, rows(4, "new"))
    code, out, err = cli(capsys, "datasets", "import", str(src), "--name", "ds")
    assert code == 0 and "ds@v4" in out, err  # numbered past the corrupt one, never onto it

    code, out, err = cli(capsys, "datasets", "verify", "--all")
    one_line_error(code, err, "1 of 5", "ds@v2")
    assert "CORRUPT  ds@v2" in out and "ok       ds@v4" in out and "ok       other@v1" in out


def test_rewritten_manifest_is_detected(capsys):
    v = _commit("ds", 50)
    man = json.loads((v.path / "manifest.json").read_text())
    man["splits"]["train"]["rows"] = 999
    (v.path / "manifest.json").write_text(json.dumps(man))
    one_line_error(*cli(capsys, "datasets", "show", "ds@v1")[::2], "ds@v1", "changed after commit")
    # Even with the checksum file rewritten too, verify still compares the rows with the data.
    import hashlib

    (v.path / "manifest.sha256").write_text(hashlib.sha256((v.path / "manifest.json").read_bytes()).hexdigest())
    code, out, err = cli(capsys, "datasets", "verify", "ds@v1")
    one_line_error(code, err, "ds@v1")
    assert "manifest says 999 rows" in out


def test_show_and_log_verify_or_say_they_did_not(capsys):
    v1 = _commit("base", 3)
    v2 = store.commit("derived", validate(rows(4, "d"), "pair"), lineage={"parents": [v1.ref]})
    code, out, err = cli(capsys, "datasets", "show", v2.ref)
    assert code == 0 and "checksums: verified" in out, err
    code, out, err = cli(capsys, "datasets", "log", v2.ref)
    assert code == 0 and out.count("[verified]") == 2, err

    f = v1.data_files("train")[0]
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    one_line_error(*cli(capsys, "datasets", "show", v1.ref)[::2], "base@v1", "checksum mismatch")
    code, out, err = cli(capsys, "datasets", "log", v2.ref)
    one_line_error(code, err, "base@v1")
    assert "CORRUPT" in out and "derived@v1" in out
    code, out, err = cli(capsys, "datasets", "show", v1.ref, "--no-verify")
    assert code == 0 and "not verified (--no-verify)" in out, err
    code, out, err = cli(capsys, "datasets", "log", v2.ref, "--no-verify")
    assert code == 0 and "[not verified]" in out, err


def test_verify_needs_a_ref_or_all(capsys):
    one_line_error(*cli(capsys, "datasets", "verify")[::2], "--all")
    _commit("ds", 2)
    code, out, err = cli(capsys, "datasets", "verify", "ds@v1")
    assert code == 0 and "ok       ds@v1" in out, err


@pytest.mark.parametrize("field,value,needle", [
    ("margin", float("nan"), "finite"), ("chosen_score", float("inf"), "finite"),
    ("rejected_score", float("-inf"), "finite"), ("label_prob", 1.5, "[0.0, 1.0]"),
    ("label_prob", -0.1, "[0.0, 1.0]"), ("votes", [1.0, float("nan")], "finite"),
])
def test_commit_validates_numbers_like_the_readers(field, value, needle):
    t = validate(rows(3), "pair")
    col = t.column(field).to_pylist()
    col[1] = value
    t = t.set_column(t.column_names.index(field), field, pa.array(col, type=t.schema.field(field).type))
    with pytest.raises(DataError) as e:
        store.commit("ds", t)
    assert e.value.row == 2 and e.value.field == field and needle in str(e.value)
    assert "ds[train]" in str(e.value)
    assert not store.list_versions("ds")


def _paused_commit(seconds: float) -> str:
    """Python source that makes every commit in its process pause `seconds` just before the rename
    that publishes the version (the temp dir then holds a finished manifest), under the name's lock."""
    return ("import time\nfrom prefdata.store import core\n_real = core._fsync_files\n"
            f"core._fsync_files = lambda tmp: (_real(tmp), time.sleep({seconds}))\n")


def test_killed_commit_temp_dir_is_removed_by_the_next_commit():
    script = (_paused_commit(30) + "from prefdata import store\nfrom prefdata.schema import validate\n"
              "print('START', flush=True)\n"
              "store.commit('killme', validate([{'prompt': 'q', 'chosen': 'g', 'rejected': 'b'}], 'pair'))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    d = store.datasets_dir() / "killme"
    deadline = time.time() + 60
    while time.time() < deadline and not any(d.glob(".tmp-*/manifest.json")):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert len(list(d.glob(".tmp-*"))) == 1  # the dead commit's, owner pid gone, only seconds old
    live = d / f".tmp-{os.getpid()}-{'0' * 32}"  # a commit still running in this process: left alone
    live.mkdir()
    v = _commit("killme", 2)
    assert v.ref == "killme@v1"
    assert [p.name for p in d.glob(".tmp-*")] == [live.name]
    assert not (v.path / ".owner").exists()


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_imports_number_versions_uniquely(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli_paused = _paused_commit(0.2) + "import sys\nfrom prefdata.cli import main\nmain()\n"
    procs = []
    for k in range(4):
        src = tmp_path / f"in{k}.jsonl"
        write_jsonl(src, rows(3, f"p{k}") + [{**BAD_ROW, "prompt": f"bad {k}"}])
        procs.append(subprocess.Popen(
            [sys.executable, "-c", cli_paused, "datasets", "import", str(src), "--name", "shared",
             "--on-error", "quarantine"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0 and "Traceback" not in err, err
    refs = sorted(out.split()[0] for _, out, _ in results)
    assert refs == ["shared@v1", "shared@v2", "shared@v3", "shared@v4"]
    assert sorted(v.ref for v in store.list_versions("shared")) == refs
    for v in store.list_versions("shared"):
        store.verify(v)
    quarantined = sorted((store.home() / "quarantine").iterdir())
    assert len(quarantined) == 4  # one per run, none overwritten
    assert {json.loads(f.read_text())["record"]["prompt"] for f in quarantined} == {f"bad {k}" for k in range(4)}
    assert not list((store.datasets_dir() / "shared").glob(".tmp-*"))


# ----------------------------------------------------------------------------- duplicates


def test_duplicates_are_counted_in_the_card_and_dedup_drops_them(tmp_path, capsys):
    src = tmp_path / "dups.jsonl"
    base = rows(3)
    write_jsonl(src, base + [base[0], {**base[1], "id": "x"}, {**rows(1, "z")[0], "id": "x"}])
    code, _, err = cli(capsys, "datasets", "import", str(src), "--name", "ds")
    assert code == 0, err
    card = store.resolve("ds@v1").card_path.read_text()
    # row 4 repeats row 1 (id and content), row 5 row 2's content, row 6 row 5's id
    assert "Duplicates: 2 rows repeat an earlier row's id, 2 repeat an earlier row's content" in card
    code, _, err = cli(capsys, "datasets", "import", str(src), "--name", "ds", "--dedup")
    # rows 4 and 5 go; row 6 stays, since the only other 'x' (row 5) was dropped
    assert code == 0 and "dropped 2 duplicate rows" in err, err
    v2 = store.resolve("ds@v2")
    assert v2.manifest["splits"]["train"]["rows"] == 4
    assert "Duplicates: 0 rows repeat" in v2.card_path.read_text()
    table, dropped = store.dedup(store.load_table("ds@v1"))
    assert (table.num_rows, dropped) == (4, 2)
    assert table.column("id").to_pylist()[-1] == "x"


def test_commit_redacts_credentials_from_any_caller():
    from prefdata import store
    from prefdata.schema import validate

    t = validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair")
    v = store.commit("redacted", t, command="prefdata datasets import x --url http://user:hunter2@h/v1",
                     lineage={"engine_config": {"base_url": "http://me:s3cret@127.0.0.1:1/v1",
                                                "note": "sk-abcdefghijklmnopqrstuvwxyz123456"}})
    text = (v.path / "manifest.json").read_text()
    assert "hunter2" not in text and "s3cret" not in text and "sk-abcdefghijklmnop" not in text


# ----------------------------------------------------------------------------- issue 24 (round 3)


def pairs_file(path, n: int = 3, tag: str = "a"):
    path.write_text("".join(json.dumps({"prompt": f"question {tag} {i}", "chosen": f"good {tag} {i}",
                                        "rejected": f"bad {tag} {i}"}) + "\n" for i in range(n)))
    return path


def imported(capsys, src, name: str = "ds", *extra: str) -> str:
    code, out, err = cli(capsys, "datasets", "import", str(src), "--name", name, *extra)
    assert code == 0, err
    return out.split()[0]  # "ds@v1  card: …"



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
