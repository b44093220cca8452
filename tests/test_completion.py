"""Shell completion: dataset refs from the store's folders, step names from the pipeline YAML and
step types from the registry; called directly and through typer's completion protocol."""

from __future__ import annotations

from pathlib import Path

from prefdata import store
from prefdata.completion import dataset_refs, pipeline_step_names, set_keys, step_types
from prefdata.schema import validate
from prefdata.testing import run_cli as cli

QUICKSTART = Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml"


def commit(name, n):
    return store.commit(name, validate([{"prompt": f"q{n}", "chosen": "a", "rejected": "b"}], "pair"))


def test_dataset_refs_list_names_then_versions():
    assert dataset_refs("") == []  # no store yet: nothing, never an error
    commit("pairs", 1), commit("pairs", 2), commit("prompts-x", 1)
    assert dataset_refs("") == ["pairs", "pairs@latest", "prompts-x", "prompts-x@latest"]
    assert dataset_refs("pairs") == ["pairs", "pairs@latest"]
    assert dataset_refs("pro") == ["prompts-x", "prompts-x@latest"]
    assert dataset_refs("pairs@") == ["pairs@latest", "pairs@v1", "pairs@v2"]
    assert dataset_refs("pairs@v") == ["pairs@v1", "pairs@v2"]
    assert dataset_refs("nope@") == [] and dataset_refs("zz") == []


def test_step_names_and_types():
    types = dict(step_types())
    assert {"rlcd", "clean_labels", "train_dpo", "eval_noise"} <= set(types)
    assert types["rlcd"].startswith("prompt -> pair") and types["train_dpo"].startswith("pair -> model")
    assert [n for n, _ in step_types("train_")] == sorted(n for n in types if n.startswith("train_"))
    names = pipeline_step_names(QUICKSTART)
    assert names and names[0] == "rlcd"
    assert set_keys(QUICKSTART, "steps.") == [f"steps.{n}." for n in names]
    assert set_keys(QUICKSTART, "steps.rl") == ["steps.rlcd."]
    assert set_keys(None, "steps.gen.uses=train_d") == ["steps.gen.uses=train_dpo"]
    assert pipeline_step_names("/no/such.yaml") == [] and set_keys("/no/such.yaml", "steps.") == []


def complete(capsys, monkeypatch, words: str) -> list[str]:
    """What bash would offer after `words`, through typer's own completion protocol, in-process."""
    monkeypatch.setattr("sys.argv", ["prefdata"])  # click names the env var after the program
    monkeypatch.setenv("_PREFDATA_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    code, out, err = cli(capsys)
    assert code == 0, err
    return out.split()


def test_completion_through_typer(capsys, monkeypatch):
    commit("pairs", 1), commit("pairs", 2)
    assert complete(capsys, monkeypatch, "prefdata datasets show pa") == ["pairs", "pairs@latest"]
    assert complete(capsys, monkeypatch, "prefdata datasets diff pairs@v1 pairs@") == \
        ["pairs@latest", "pairs@v1", "pairs@v2"]
    assert complete(capsys, monkeypatch, "prefdata eval noise --dataset pairs@v") == ["pairs@v1", "pairs@v2"]
    assert "doctor" in complete(capsys, monkeypatch, "prefdata do")
