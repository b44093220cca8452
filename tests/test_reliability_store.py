"""Store reliability (issue 12, items 1, 5, 6 and the store's part of 9), through the real CLI.

Each test drives `prefdata.cli.main` in-process (or, where processes must race or die, real
subprocesses) and checks the exit code, a single stderr line, and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
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
