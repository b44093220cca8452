"""`prefdata datasets head` shows rows without Python; `datasets log` of an unknown ref is an error."""

from __future__ import annotations

import json

import pytest

from prefdata.schema import validate


def _commit():
    from prefdata import store

    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}",
             "label_prob": 0.2 if i % 3 == 0 else 0.9} for i in range(10)]
    store.commit("h", validate(rows, "pair"), kind="pair")


def test_head_prints_jsonl_off_a_terminal_and_filters(capsys):
    from prefdata.cli import main

    _commit()
    main(["datasets", "head", "h@latest", "-n", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["chosen"][-1]["content"] == "good answer 0"
    main(["datasets", "head", "h@latest", "-n", "10", "--where", "label_prob < 0.5"])
    got = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["prompt"][-1]["content"] for r in got] == ["question 0", "question 3", "question 6", "question 9"]
    with pytest.raises(SystemExit) as e:
        main(["datasets", "head", "h@latest", "--where", "nope >"])
    assert e.value.code != 0 and "--where" in capsys.readouterr().err


def test_log_of_an_unknown_ref_is_an_error(capsys):
    from prefdata.cli import main

    _commit()
    with pytest.raises(SystemExit) as e:
        main(["datasets", "log", "missing@v2"])
    assert e.value.code == 1 and "unknown dataset 'missing'" in capsys.readouterr().err
