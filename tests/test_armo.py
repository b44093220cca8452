"""The multi-objective reward model (ArmoRM-style) on a tiny backbone: aspects read from the
conditional generator's meta, per-aspect heads that learn their aspect, a gate whose weights sum to 1,
the reward as their mix, the per-aspect table in the card, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefdata import store
from prefdata.schema import validate
from prefdata.testing import run_cli


def aspect_pairs(n=12):
    rows = []
    for i in range(n):
        helpful = i % 2 == 0
        meta = {"prompt_id": f"p{i}", "direction": "better" if i % 3 else "worse", "guideline": "chat",
                "aspects": ["helpfulness"] if helpful else ["honesty", "harmlessness"]}
        rows.append({"prompt": f"question {i}",
                     "chosen": (f"step one then step two {i}" if helpful else f"i am not sure about {i}"),
                     "rejected": (f"no {i}" if helpful else f"certainly always {i}"),
                     "meta": json.dumps(meta)})
    return store.commit("cond", validate(rows, "pair"))


def test_armo_heads_gate_and_card(tiny_model, tmp_path):
    from trainers.armo import ArmoRewardModel, ArmoTrainConfig, pair_aspects, train

    v = aspect_pairs()
    assert pair_aspects(store.load(v.ref))[1] == ["honesty", "harmlessness"]
    out = tmp_path / "armo"
    card = train(ArmoTrainConfig(dataset=v.ref, model=tiny_model, output_dir=str(out), gate_steps=50, eval_fraction=0.25))
    res = json.loads((out / "prefdata-train.json").read_text())["result"]
    assert res["aspects"] == ["harmlessness", "helpfulness", "honesty"] and res["heldout_pairs"] == 3
    per = res["per_aspect"]
    assert per["helpfulness"]["train_pairs"] + per["helpfulness"]["heldout_pairs"] == 6
    assert per["honesty"]["train_pairs"] + per["honesty"]["heldout_pairs"] == 6
    for a in per.values():  # chosen is better on its aspects: a head wired the wrong way round would sit near 0
        assert a["train_accuracy"] >= 0.9
    assert sum(a["mean_gate"] for a in per.values()) == pytest.approx(1.0, abs=1e-5)
    text = card.read_text()
    assert "## Per-aspect accuracy" in text and "| helpfulness |" in text
    m = ArmoRewardModel.load(out)
    s = m.score([[{"role": "user", "content": "question 0"}]] * 2,
                [[{"role": "assistant", "content": "step one then step two 0"}],
                 [{"role": "assistant", "content": "no 0"}]])
    assert s["aspects"].shape == (2, 3) and np.allclose(s["gates"].sum(1), 1.0)
    scale = float(m.gate.log_scale.exp())
    assert np.allclose(s["reward"], scale * (s["gates"] * s["aspects"]).sum(1))


def test_armo_cli_and_no_aspects_error(tiny_model, tmp_path, capsys):
    v = aspect_pairs(n=6)
    code, _, err = run_cli(capsys, "train", "armo", "--dataset", v.ref, "--model", tiny_model, "--output-dir",
                           tmp_path / "a", "--set", "gate_steps=5")
    assert code == 0, err
    assert (tmp_path / "a" / "armo.safetensors").is_file()
    plain = store.commit("plain", validate([{"prompt": "q", "chosen": "a", "rejected": "b"}], "pair"))
    code, _, err = run_cli(capsys, "train", "armo", "--dataset", plain.ref, "--model", tiny_model)
    assert code != 0 and "no pair names an aspect" in err and "Traceback" not in err
