"""CLI output for scripts: plain TSV under a pipe, refs never cut, `--json` on the documented schemas.

capsys replaces stdout with a non-terminal stream, exactly what a pipe or `nohup` gives.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from prefdata import store
from prefdata.cli import main
from prefdata.schema import validate

LONG = "pandalm-clean-" + "x" * 46  # 60 characters: past what an 80-column rich table kept whole


def pairs(n=3, tag="a", ids=None):
    return validate([{"id": (ids or [f"{tag}{i}" for i in range(n)])[i],
                      "prompt": [{"role": "user", "content": f"q {i}"}],
                      "chosen": [{"role": "assistant", "content": f"good {tag} {i}"}],
                      "rejected": [{"role": "assistant", "content": f"bad {tag} {i}"}]} for i in range(n)], "pair")


def run(capsys, *argv):
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def two_versions():
    v1 = store.commit(LONG, pairs(3), lineage={"parents": ["prompts.jsonl"]})
    v2 = store.commit(LONG, pairs(4, ids=["a0", "a1", "b2", "b3"]), lineage={"parents": [v1.ref]})
    return v1, v2


# ----------------------------------------------------------------------------- plain tables

def test_list_off_a_terminal_is_tsv_with_a_header_and_whole_refs(capsys, two_versions):
    code, out, _ = run(capsys, "datasets", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("\t") == ["ref", "kind", "rows", "content hash", "created", "parents"]
    assert not re.search("[┃│┏━…]", out)  # no rich box, no ellipsis
    rows = [ln.split("\t") for ln in lines[1:]]
    assert [r[0] for r in rows] == [f"{LONG}@v1", f"{LONG}@v2"]
    assert rows[1][2] == "4" and rows[1][5] == f"{LONG}@v1"


def test_show_log_diff_keep_long_refs_and_paths_on_one_line(capsys, two_versions):
    v1, v2 = two_versions
    _, out, _ = run(capsys, "datasets", "show", v2.ref)
    assert f"  path: {v2.path}\n" in out and f"  parents: {v1.ref}\n" in out
    _, out, _ = run(capsys, "datasets", "log", v2.ref)
    assert out.splitlines()[0].startswith(f"└ {v2.ref} sha:")
    _, out, _ = run(capsys, "datasets", "diff", v1.ref, v2.ref)
    assert out.splitlines()[0] == f"{v1.ref} → {v2.ref}: rows 3 → 4"


def test_on_a_terminal_a_long_ref_folds_but_is_never_cut(monkeypatch):
    from prefdata.tables import print_table

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "60")
    ref = f"{LONG}@v12"
    for wide in (False, True):
        f = Tty()
        print_table(["ref", "kind", "rows", "content hash", "created", "parents"],
                    [[ref, "pair", "4", "0123456789ab", "2025-01-01T00:00:00+00:00", "/a/long/path/in.jsonl"]],
                    file=f, wide=wide)
        text = re.sub(r"\x1b\[[0-9;]*m", "", f.getvalue())
        assert "…" not in text
        # The ref column's pieces, read top to bottom, give the whole ref back.
        first = [ln.split("│")[1].strip() for ln in text.splitlines() if ln.startswith("│")]
        assert "".join(first) == ref
        if wide:
            assert len(first) == 1  # --wide: one line per row


# ----------------------------------------------------------------------------- --json

def test_list_json(capsys, two_versions):
    code, out, _ = run(capsys, "datasets", "list", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == "prefdata.datasets.list/1"
    v = doc["versions"][1]
    assert set(v) == {"ref", "name", "version", "corrupt", "reason", "kind", "rows", "splits", "content_hash",
                      "created", "parents", "path"}
    assert (v["ref"], v["name"], v["version"], v["rows"], v["splits"], v["parents"], v["corrupt"]) == \
        (f"{LONG}@v2", LONG, "v2", 4, {"train": 4}, [f"{LONG}@v1"], False)
    assert len(v["content_hash"]) == 64


def test_show_json(capsys, two_versions):
    _, v2 = two_versions
    code, out, _ = run(capsys, "datasets", "show", v2.ref, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == "prefdata.datasets.show/1"
    assert {"ref", "kind", "rows", "splits", "content_hash", "parents", "lineage", "duplicates", "command",
            "path", "card", "files", "verified", "created"} <= set(doc)
    assert doc["verified"] is True and doc["path"] == str(v2.path) and doc["rows"] == 4
    assert doc["duplicates"] == {"ids": 0, "rows": 0}
    assert json.loads(run(capsys, "datasets", "show", v2.ref, "--json", "--no-verify")[1])["verified"] is False


def test_log_json(capsys, two_versions):
    v1, v2 = two_versions
    doc = json.loads(run(capsys, "datasets", "log", v2.ref, "--json")[1])
    assert doc["schema"] == "prefdata.datasets.log/1" and doc["ref"] == v2.ref
    assert [(n["depth"], n["ref"], n["type"], n["status"]) for n in doc["nodes"]] == [
        (0, v2.ref, "version", "verified"), (1, v1.ref, "version", "verified"), (2, "prompts.jsonl", "external", None)]
    assert all(set(n) == {"depth", "ref", "type", "status", "reason", "content_hash", "uses", "created"}
               for n in doc["nodes"])


def test_diff_json(capsys, two_versions):
    v1, v2 = two_versions
    doc = json.loads(run(capsys, "datasets", "diff", v1.ref, v2.ref, "--json")[1])
    assert doc["schema"] == "prefdata.datasets.diff/1"
    assert (doc["a"], doc["b"], doc["split"], doc["rows"]) == (v1.ref, v2.ref, "train", {"a": 3, "b": 4})
    assert (doc["added_ids"], doc["removed_ids"]) == (["b2", "b3"], ["a2"])
    assert "lineage_changed" in doc and "columns_added" in doc


def test_models_list_json_and_tsv(capsys):
    from prefdata import models

    d = models.models_dir() / ("m" * 60)
    d.mkdir(parents=True)
    (d / models.INFO_FILE).write_text(json.dumps({"hub_id": "org/" + "m" * 60, "source": "pypi:x/y.whl",
                                                  "weights_sha256": "ab" * 32}))
    doc = json.loads(run(capsys, "models", "list", "--json")[1])
    assert doc["schema"] == "prefdata.models.list/1"
    assert doc["models"] == [{"name": "org/" + "m" * 60, "path": str(d), "source": "pypi:x/y.whl",
                              "weights_sha256": "ab" * 32}]
    out = run(capsys, "models", "list")[1].splitlines()
    assert out[0].split("\t") == ["name", "path", "source"]
    assert out[1].split("\t") == ["org/" + "m" * 60, str(d), "pypi:x/y.whl"]


EVAL_ARGS = {  # module, its run and format functions (stubbed: models are slow), the command's required flags
    "noise": ("prefdata.curation.noise", "run_noise_eval", "format_report", ["--dataset", "D"]),
    "agreement": ("prefdata.curation.human", "run_agreement", "format_agreement",
                  ["--dataset", "D", "--agreement-column", "a"]),
    "gold": ("prefdata.curation.human", "run_gold", "format_gold", ["--dataset", "D", "--gold", "D"]),
    "policy": ("prefdata.evals.policy", "run_policy_eval", "format_report",
               ["--model", "m", "--baseline", "b", "--prompts", "D", "--judge", "j"]),
    "ranking": ("prefdata.evals.ranking", "run_ranking_eval", "format_report",
                ["--model", "m", "--ref", "r", "--dataset", "D"]),
}


@pytest.mark.parametrize("command", list(EVAL_ARGS))
def test_eval_json_names_its_schema_and_is_strict_json(capsys, monkeypatch, tmp_path, command):
    import importlib

    from prefdata.curation import cli as curation_cli
    from prefdata.evals import cli as evals_cli, policy

    module, fn, fmt, args = EVAL_ARGS[command]
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "a": 3}\n')
    report = {"pairs": 0, "win_rate": float("nan"), "ci95": [float("-inf"), 1.0], "by": {"x": float("nan")}}
    monkeypatch.setattr(importlib.import_module(module), fn, lambda *a, **k: dict(report))
    monkeypatch.setattr(importlib.import_module(module), fmt, lambda r: "text report")
    monkeypatch.setattr(evals_cli, "_engine", lambda *a: None)
    monkeypatch.setattr(policy, "read_prompts", lambda src: [])
    monkeypatch.setattr(curation_cli, "_config", lambda model, config, **fixed: None)
    out = tmp_path / "r.json"
    argv = ["eval", command, *[str(data) if a == "D" else a for a in args], "--json", "--out", str(out)]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    doc = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert doc == {"schema": f"prefdata.eval.{command}/1", "pairs": 0, "win_rate": None, "ci95": [None, 1.0],
                   "by": {"x": None}}  # NaN/inf become null: jq and strict parsers refuse them
    assert list(doc)[0] == "schema" and json.loads(out.read_text()) == doc
    code, stdout, _ = run(capsys, *argv[:-3])
    assert code == 0 and stdout == "text report\n"


# ----------------------------------------------------------------------------- progress in logs

class Log(io.StringIO):
    def isatty(self):
        return False


def test_progress_off_a_terminal_prints_periodic_lines(monkeypatch):
    from prefdata import progress

    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = Log()
    with progress.progress_bar("judge", 5, unit="pairs", every=2.0, stream=log) as advance:
        for _ in range(5):
            advance(1, note="7 tok/s")
    lines = log.getvalue().splitlines()
    # t=0 start; advances at t=1..5: lines at t=2 (2 done) and t=4 (4 done), then the closing line.
    assert lines == ["judge: 2/5 pairs (1.0/s, 7 tok/s, eta 3s)", "judge: 4/5 pairs (1.0/s, 7 tok/s, eta 1s)",
                     "judge: 5/5 pairs (1.0/s, 7 tok/s, eta 0s)"]


def test_progress_interval_from_the_environment(monkeypatch):
    from prefdata import progress
    from prefdata.errors import ConfigError

    monkeypatch.setattr(progress.time, "monotonic", iter(float(t) for t in range(100)).__next__)
    monkeypatch.setenv("PREFDATA_PROGRESS_EVERY", "0")
    log = Log()
    with progress.progress_bar("fit", 2, unit="steps", stream=log) as advance:
        advance(0, note="loss 1")  # only the note changes: no line repeating 0/2
        advance(1, note="loss 0.5")
        advance(1)
    assert [ln.split(" (")[0] for ln in log.getvalue().splitlines()] == ["fit: 1/2 steps", "fit: 2/2 steps"]
    monkeypatch.setenv("PREFDATA_PROGRESS_EVERY", "soon")
    with pytest.raises(ConfigError, match="PREFDATA_PROGRESS_EVERY must be a number of seconds >= 0, got 'soon'"):
        with progress.progress_bar("fit", 2):
            pass


def test_progress_short_pass_stays_quiet_and_bars_nest_on_a_terminal():
    from prefdata.progress import progress_bar

    log = Log()
    with progress_bar("quick", 3, stream=log) as advance:
        advance(3)
    assert log.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    # rich allows one live display: the inner bar must join the outer one, not raise LiveError.
    with progress_bar("outer", 2, stream=tty) as outer:
        with progress_bar("inner", 2, stream=tty) as inner:
            inner(2)
        outer(2)


def test_judge_voter_reports_progress_off_a_terminal(monkeypatch, capsys):
    from prefdata import progress
    from prefdata.rewards.voters import judge_votes

    monkeypatch.setattr(progress.time, "monotonic", iter(float(t) for t in range(0, 10_000, 100)).__next__)

    class Judge:
        model_id = "fake"

        def score(self, reqs, comps):
            return [1.0 if c == "A" else 0.0 for c in comps]

    judge_votes(pairs(3), Judge())
    err = capsys.readouterr().err
    assert re.search(r"^judge voter: 3/3 pairs", err, re.MULTILINE)


def test_engine_generation_and_scoring_report_progress_off_a_terminal(tiny_model, monkeypatch, capsys):
    from prefdata import progress
    from prefdata.engines import ChatRequest, EngineConfig, SamplingParams
    from prefdata.engines.transformers import TransformersEngine

    eng = TransformersEngine(EngineConfig(model=tiny_model, max_batch_size=2))
    monkeypatch.setattr(progress.time, "monotonic", iter(float(t) for t in range(0, 10_000, 100)).__next__)
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"hi {i}"}]) for i in range(3)]
    eng.generate_samples([(r, 0) for r in reqs], SamplingParams(max_tokens=2, temperature=0.0))
    eng.score(reqs, ["a", "b", "c"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(("generate", "score"))]
    # Two batches of at most 2 rows each: a line after each, the last one at the total.
    assert [ln.split(" (")[0] for ln in err] == ["generate: 2/3 rows", "generate: 3/3 rows",
                                                  "score: 2/3 rows", "score: 3/3 rows"]
    assert "tok/s" in err[0]
