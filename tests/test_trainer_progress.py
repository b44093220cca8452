"""Training progress through prefdata.progress (no raw `{'loss': ...}` dicts), and `report_to`:
the trackers get the curves and a run config whose run name is the exact dataset version."""

from __future__ import annotations

import importlib.util
import io
import re

import pytest

from prefdata import store
from prefdata.schema import validate
from prefdata.testing import run_cli as cli


def toy(n=8):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"} for i in range(n)]
    return store.commit("toy", validate(rows, "pair"))


LINE = re.compile(r"^training on toy@v1: (\d)/3 steps \([\d.]+/s, loss [\d.]+, acc [\d.]+, margin [-\d.e]+, "
                  r"eta \w+\)$")


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_training_off_a_terminal_prints_progress_lines_not_dicts(tiny_model, tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setenv("PREFDATA_PROGRESS_EVERY", "0")  # a line per step; the default is one per 30 s
    v = toy()
    code, out, err = cli(capsys, "train", kind, "--dataset", v.ref, "--model", tiny_model, "--set", "max_steps=3",
                         "--output-dir", tmp_path / kind)
    assert code == 0, err
    lines = [ln for ln in (out + err).splitlines() if ln.startswith("training on")]
    assert [int(LINE.match(ln).group(1)) for ln in lines] == [1, 2, 3], lines  # DPO: rewards/*, reward: accuracy
    assert not [ln for ln in (out + err).splitlines() if ln.lstrip().startswith("{") or "'loss'" in ln]
    assert "\r" not in err and "it/s]" not in err  # nor HF's tqdm bars (loading weights, tokenizing) in a log


def test_progress_note_picks_loss_accuracy_and_margin():
    from trainers.common import progress_note

    assert progress_note({"loss": 0.693147, "rewards/accuracies": 0.5, "rewards/margins": 0.01234,
                          "grad_norm": 3.0}) == "loss 0.6931, acc 0.500, margin 0.01234"
    assert progress_note({"loss": 1.0, "accuracy": 1.0, "margin": -2.0}) == "loss 1.0000, acc 1.000, margin -2"
    assert progress_note({"eval_loss": 0.7}) is None and progress_note({"train_loss": 0.7}) is None


def test_report_to_reaches_training_arguments_and_is_checked(tmp_path, capsys, monkeypatch):
    from prefdata.config import fingerprint_dump
    from prefdata.errors import ConfigError
    from trainers.common import load_config, training_args_common
    from trainers.dpo import DPOTrainConfig

    v = toy()
    cfg = load_config(DPOTrainConfig, None, ["report_to=[tensorboard]"], dataset="toy@latest",
                      output_dir=str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if installed
    args = training_args_common(cfg)
    assert args["report_to"] == ["tensorboard"] and args["run_name"] == v.ref  # @latest resolved to @v1
    assert training_args_common(DPOTrainConfig(dataset="toy@v1"))["report_to"] == []  # default: none
    assert "report_to" not in fingerprint_dump(cfg)  # run-only: a train step's fingerprint does not change
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="report_to: wandb is not installed; pip install wandb"):
        training_args_common(DPOTrainConfig(dataset=v.ref, report_to="wandb"))
    monkeypatch.undo()
    code, _, err = cli(capsys, "train", "dpo", "--dataset", v.ref, "--set", "report_to=mlflow")
    assert code == 1 and err.count("\n") == 1 and "unknown tracker 'mlflow'" in err, err


HAVE_TB = importlib.util.find_spec("tensorboard") is not None


def test_a_bar_on_a_terminal_and_report_to_tensorboard(tiny_model, tmp_path, capsys, monkeypatch):
    """One run checks both: the rich bar on a terminal, and (with tensorboard installed, a dev extra)
    the curves and the run config with the dataset ref in the event file."""
    import json

    from trainers.dpo import DPOTrainConfig, train

    class Tty(io.StringIO):
        def isatty(self):
            return True

    v = toy()
    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    train(DPOTrainConfig(dataset=v.ref, model=tiny_model, max_steps=2, output_dir=str(tmp_path),
                         report_to="tensorboard" if HAVE_TB else "none"))
    drawn = tty.getvalue()
    assert "training on toy@v1" in drawn and "loss 0.69" in drawn and "margin" in drawn  # rich draws the note
    assert "{'loss'" not in drawn + capsys.readouterr().out
    if not HAVE_TB:
        pytest.skip("tensorboard not installed (pip install tensorboard): the bar was checked, the tracker not")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert "train/rewards/accuracies" in acc.Tags()["scalars"]
    run_config = json.loads(acc.Tensors("args/text_summary")[0].tensor_proto.string_val[0])
    assert run_config["run_name"] == v.ref and run_config["report_to"] == ["tensorboard"]
