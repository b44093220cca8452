"""`prefdata run FILE --only STEP / --from STEP / --dry-run` (issue 25): one step at a time, and a look
before a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from prefdata.schema import validate


def _pipeline(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}",
             "j": int(rng.choice([1, 1, 1, -1]))} for i in range(60)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    voters = [{"type": "column", "family": "j", "columns": ["j"]}]
    spec = {"name": "two", "steps": [
        {"name": "first", "uses": "clean_labels", "input": str(data), "output": "one", "config": {"voters": voters}},
        {"name": "second", "uses": "clean_labels", "input": "step:first", "output": "two", "config": {"voters": voters}}]}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_only_runs_one_step_and_reads_a_left_out_step_from_the_store(tmp_path, capsys):
    from prefdata import store
    from prefdata.cli import main

    p = _pipeline(tmp_path)
    with pytest.raises(SystemExit) as e:  # nothing committed for `first` yet: say so, run nothing
        main(["run", str(p), "--only", "second"])
    assert e.value.code == 1 and "reads step:first, which is left out" in capsys.readouterr().err
    main(["run", str(p), "--only", "first"])
    assert [v.ref for v in store.list_versions("one")] == ["one@v1"]
    with pytest.raises(Exception):
        store.resolve("two@latest")
    main(["run", str(p), "--only", "second"])
    two = store.resolve("two@latest")
    assert two.manifest["lineage"]["parents"] == ["one@v1"]
    assert [v.ref for v in store.list_versions("one")] == ["one@v1"]  # `first` was not run again
    with pytest.raises(SystemExit):
        main(["run", str(p), "--only", "nope"])
    assert "no step named 'nope'" in capsys.readouterr().err


def test_dry_run_says_what_would_run_and_what_is_committed(tmp_path, capsys):
    from prefdata import store
    from prefdata.cli import main

    p = _pipeline(tmp_path)
    main(["run", str(p), "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("first (clean_labels): 60 rows from") and out[0].endswith(": run")
    assert out[1].startswith("second (clean_labels): ? rows from step:first") and "after first" in out[1]
    with pytest.raises(Exception):
        store.resolve("one@latest")  # a dry run commits nothing
    main(["run", str(p), "--from", "first"])
    capsys.readouterr()
    main(["run", str(p), "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert "skip: already committed as one@v1" in out[0] and "skip: already committed as two@v1" in out[1]


def test_dry_run_counts_requests_and_what_the_cache_holds(tmp_path, tiny_model, capsys):
    from prefdata.cli import main

    sets = ["--set", f"engine.model={tiny_model}", "--set", "steps.rlcd.config.max_tokens=8",
            "--set", "steps.rlcd.config.max_retries=0"]
    main(["run", "pipelines/quickstart.yaml", "--dry-run", "--set", "steps.rlcd.limit=4", *sets])
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert first.startswith("rlcd (rlcd): 4 rows from builtin:quickstart_prompts") and ": run; would send up to" in first
    sent = int(first.split("would send up to ")[1].split()[0])
    assert sent >= 8 and "(0 answered by the cache" in first  # two answers (one per principle) per prompt
    main(["run", "pipelines/quickstart.yaml", "--set", "steps.rlcd.limit=2", *sets])  # 2 prompts really run
    capsys.readouterr()
    main(["run", "pipelines/quickstart.yaml", "--dry-run", "--set", "steps.rlcd.limit=4", *sets])
    again = capsys.readouterr().out.strip().splitlines()[0]
    cached = int(again.split("(")[-1].split()[0]) if "answered by the cache" in again else -1
    assert cached >= sent // 2 - 1 and int(again.split("would send up to ")[1].split()[0]) <= sent - cached
