"""Trainers under bad numbers: non-finite or out-of-range per-row values are refused before a step,
naming row and field; a non-finite loss or gradient stops training with exit 1, a card that says it
failed and no weights; KTO reads the per-row `weight`. All through `prefdata train` in-process, on the
tiny random model. See docs/RELIABILITY.md."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from prefdata import io, store
from prefdata.schema import validate
from prefdata.testing import run_cli as cli  # the real CLI in-process: (code, stdout, stderr)


def one_error_line(code: int, err: str, *needles: str) -> str:
    """Exit 1, no traceback, and exactly one `error:` line, the last thing on stderr (a run that
    started training has printed progress bars and load reports before it)."""
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def no_weights(out: Path) -> bool:
    return not any(out.glob("*.safetensors")) and not any(out.glob("*.bin"))


def pair_rows(n: int = 8) -> list[dict]:
    return [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}",
             "label_prob": 0.9, "margin": 0.5, "chosen_score": 4.0, "rejected_score": 2.0} for i in range(n)]


def poisoned_version(monkeypatch, row: int, **values) -> str:
    """A store version whose row `row` (1-based) holds `values`: what an older prefdata, which did
    not validate at commit, or another tool could have written. The version itself is committed
    clean and the bad values are served by `store.load`, so the test does not depend on whether
    today's commit would refuse them."""
    import datasets

    v = store.commit("toy", validate(pair_rows(), "pair"))
    table = store.load_table(v.ref)
    rows = table.to_pylist()
    rows[row - 1].update(values)
    served = datasets.Dataset(pa.Table.from_pylist(rows, schema=table.schema))
    real = store.load
    monkeypatch.setattr(store, "load", lambda ref, split="train": served if ref == v.ref else real(ref, split))
    return v.ref


def train(capsys, kind: str, dataset: str, model: str, out: Path, *sets: str):
    args = ["train", kind, "--dataset", dataset, "--model", model, "--output-dir", str(out),
            "--set", "max_steps=1"]
    for s in sets:
        args += ["--set", s]
    return cli(capsys, *args)


# ----------------------------------------------------------------------------- refused before training

BAD_INPUTS = [
    # (trainer, extra --set, the bad values of row 3, words of the one line)
    ("reward", [], {"margin": math.nan}, ["row 3", "field 'margin'", "not a finite number"]),
    ("dpo", ["loss=offset"], {"margin": math.nan}, ["row 3", "field 'margin'", "not a finite number"]),
    ("dpo", ["loss=soft"], {"label_prob": math.inf}, ["row 3", "field 'label_prob'", "not a finite"]),
    ("reward", [], {"margin": 1e300}, ["row 3", "field 'margin'", "overflows float32"]),
    ("kto", [], {"label_prob": 1.5}, ["row 3", "field 'label_prob'", "outside [0.0, 1.0]"]),
    ("sft", [], {"chosen_score": -math.inf}, ["row 3", "field 'chosen_score'", "not a finite"]),
    ("orpo", [], {"rejected_score": math.nan}, ["row 3", "field 'rejected_score'", "not a finite"]),
]


@pytest.mark.parametrize("kind,sets,values,needles", BAD_INPUTS,
                         ids=[f"{k}-{next(iter(v))}={next(iter(v.values()))}" for k, _, v, _ in BAD_INPUTS])
def test_bad_row_number_refused_before_training(tiny_model, tmp_path, capsys, monkeypatch, kind, sets, values,
                                                needles):
    ref = poisoned_version(monkeypatch, 3, **values)
    out = tmp_path / "out"
    code, _, err = train(capsys, kind, ref, tiny_model, out, *sets)
    one_error_line(code, err, ref, *needles)
    assert not out.exists() or no_weights(out)


# ----------------------------------------------------------------------------- stopped during training


@pytest.fixture(scope="module")
def nan_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its final norm set to NaN: every logit, and so every loss, is NaN (what a
    corrupted checkpoint or a diverged run looks like)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("nan-llama")
    shutil.copytree(tiny_model, path, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind", ["reward", "dpo", "kto"])
def test_non_finite_loss_stops_training_and_the_card_says_failed(nan_model, tmp_path, capsys, kind):
    v = store.commit("clean", validate(pair_rows(), "pair"))
    out = tmp_path / "out"
    code, _, err = train(capsys, kind, v.ref, nan_model, out)
    line = one_error_line(code, err, "training failed", "non-finite loss", "no model saved")
    assert str(out / "README.md") in line
    info = json.loads((out / "prefdata-train.json").read_text())
    assert info["status"] == "failed" and "non-finite loss" in info["failure"]
    assert info["result"]["status"] == "failed"
    assert "FAILED" in (out / "README.md").read_text()
    assert no_weights(out)


def test_gradient_guard_stops_before_the_optimizer_step():
    # A finite loss with a non-finite gradient: the guard stops and clears the gradients, so the
    # optimizer step that follows in HF's loop leaves the weights as they were.
    import torch
    from transformers import TrainerControl, TrainerState

    from trainers.common import guard_finite

    class FakeTrainer:
        def __init__(self):
            self.callbacks, self.state, self.control = [], TrainerState(), TrainerControl()

        def add_callback(self, cb):
            self.callbacks.append(cb)

        def training_step(self, *a, **k):
            return torch.tensor(1.0)

    t = FakeTrainer()
    guard = guard_finite(t)
    layer = torch.nn.Linear(2, 1)
    layer.weight.grad = torch.tensor([[1.0, float("inf")]])
    layer.bias.grad = torch.tensor([0.5])
    t.callbacks[0].on_pre_optimizer_step(None, t.state, t.control, model=layer)
    assert "non-finite gradient (in weight) at step 1" == guard.failure
    assert t.control.should_training_stop and layer.weight.grad is None
    before = layer.weight.detach().clone()
    torch.optim.AdamW(layer.parameters(), lr=1.0).step()
    assert torch.equal(layer.weight, before)


# ----------------------------------------------------------------------------- KTO per-row weight


def test_kto_reads_the_per_row_weight(tiny_model, tmp_path, capsys):
    # Doubling every row's weight doubles the first step's loss exactly (the loss is the mean of
    # weight * per-row loss; the band ratio and the KL estimate do not change). TRL alone drops the
    # column, so both runs would log the same loss.
    def run(weight: float, name: str) -> dict:
        rows = [{"prompt": f"q {i}", "completion": f"answer {i}", "label": i % 2 == 0, "weight": weight}
                for i in range(8)]
        f = io.write(validate(rows, "unpaired"), tmp_path / f"{name}.jsonl")
        code, _, err = train(capsys, "kto", str(f), tiny_model, tmp_path / name)
        assert code == 0, err
        return json.loads((tmp_path / name / "prefdata-train.json").read_text())["result"]

    one, two = run(1.0, "w1"), run(2.0, "w2")
    assert one["status"] == "succeeded" and math.isfinite(one["train_loss"]) and one["train_loss"] > 0
    assert two["train_loss"] == pytest.approx(2 * one["train_loss"], rel=1e-4)
    assert two["row_weights"] == {"column": "weight", "min": 2.0, "max": 2.0, "mean": 2.0}
    assert one["desirable_weight_used"] == two["desirable_weight_used"]
