"""`repeat: {times, carry}` through `prefdata run`: each iteration generates with the model the last
one trained, every iteration is linked in lineage, and reruns (or more iterations) reuse what is done."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prefdata import store
from prefdata.testing import run_cli as cli  # the real CLI in-process: (code, stdout, stderr)


def loop_file(tmp_path, model, **repeat) -> Path:
    p = tmp_path / "loop.yaml"
    p.write_text(yaml.safe_dump({
        "name": "tiny-loop", "engine": {"backend": "transformers", "model": model},
        "repeat": {"times": 2, "carry": {"model": "step:dpo"}, **repeat},
        "steps": [{"name": "gen", "uses": "rlcd", "input": "builtin:quickstart_prompts", "limit": 3, "output": "tl",
                   "config": {"max_tokens": 6}},
                  {"name": "dpo", "uses": "train_dpo", "input": "step:gen", "output": "tl-dpo",
                   "config": {"lora": True, "max_steps": 1, "max_length": 128, "learning_rate": 1e-3}}]}))
    return p


def refs(out: str) -> dict[str, str]:
    return {line.split(": ")[0]: line.split(": ", 1)[1].split("  card: ")[0]
            for line in out.splitlines() if line.startswith("iter") and "  card: " in line}


def test_iterations_carry_the_model_and_link_lineage(tiny_model, tmp_path, capsys):
    p = loop_file(tmp_path, tiny_model)
    code, out, err = cli(capsys, "run", p)
    assert code == 0, err
    r = refs(out)
    assert set(r) == {"iter1.gen", "iter1.dpo", "iter2.gen", "iter2.dpo"}
    assert r["iter1.gen"] == "tl-iter1@v1" and r["iter2.gen"] == "tl-iter2@v1"
    m2 = r["iter1.dpo"]
    it2 = store.resolve(r["iter2.gen"]).manifest["lineage"]
    # Iteration 2 generated with M_2 (the model iteration 1 trained), and names iteration 1's pairs.
    assert it2["engine_config"]["model"] == m2 and it2["iteration"] == 2
    assert it2["parents"] == ["builtin:quickstart_prompts", "tl-iter1@v1"]
    step2 = json.loads((Path(r["iter2.dpo"]).parent / "step.json").read_text())["lineage"]
    assert step2["base_model"] == m2 and step2["parents"] == ["tl-iter2@v1", m2] and step2["iteration"] == 2
    card = json.loads((Path(r["iter2.dpo"]) / "prefdata-train.json").read_text())
    assert card["dataset"] == "tl-iter2@v1" and card["config"]["model"] == m2

    # One more iteration: 1 and 2 are found by their fingerprints, only 3 runs.
    code, out3, err3 = cli(capsys, "run", p, "--set", "repeat.times=3")
    assert code == 0, err3
    assert err3.count("skipped") == 4 and "▶ gen" in err3
    r3 = refs(out3)
    assert {k: v for k, v in r3.items() if not k.startswith("iter3")} == r
    assert store.resolve(r3["iter3.gen"]).manifest["lineage"]["engine_config"]["model"] == r["iter2.dpo"]
    assert len(store.list_versions("tl-iter1")) == 1


def test_carry_must_name_a_train_step(tiny_model, tmp_path, capsys):
    code, _, err = cli(capsys, "run", loop_file(tmp_path, tiny_model, carry={"model": "step:gen"}))
    assert code == 1 and "repeat.carry.model: expected step:<a train step>, got 'step:gen'" in err
    code, _, err = cli(capsys, "run", loop_file(tmp_path, tiny_model, times=0))
    assert code == 1 and "repeat.times" in err
    assert not (store.home() / "datasets").exists()


def test_the_old_loop_format_is_refused_with_a_pointer(tmp_path, capsys):
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump({"self_reward_loop": True, "iterations": 2}))
    code, _, err = cli(capsys, "run", p)
    assert code == 1 and "ordinary pipeline" in err and "repeat:" in err
