"""Logs off a terminal (issue 25, item 6): a `prefdata train` whose stderr goes to a file or pipe leaves
plain lines there: no tqdm carriage returns (datasets' Map, transformers' bars), no ANSI escapes
(transformers' load report), no TRL notices, and the loss even in a 2-step run. The curves' one-point
eval panel has one readable step tick."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from prefdata import store
from prefdata.schema import validate

# The CLI as a user runs it, in a fresh process (the bars and notices come from first imports).
CLI = "import sys; from prefdata.cli import main; main(sys.argv[1:])"


def toy(n=8):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"} for i in range(n)]
    return store.commit("toy", validate(rows, "pair"))


# sft: datasets' Map bar (mapping rows before the model loads); reward: transformers' bold load report
# (the new score head); orpo: TRL's trl.experimental notice and its collator warning.
@pytest.mark.parametrize("kind", ["sft", "reward", "orpo"])
def test_train_off_a_terminal_logs_plain_lines_with_the_loss(tiny_model, tmp_path, kind):
    v = toy()
    env = {k: val for k, val in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS",
                                                                 "HF_DATASETS_DISABLE_PROGRESS_BARS",
                                                                 "TRL_EXPERIMENTAL_SILENCE",
                                                                 "PREFDATA_PROGRESS_EVERY")}
    with open(tmp_path / "log", "w+b") as log:  # stderr to a file, as `prefdata train ... 2>log`
        res = subprocess.run([sys.executable, "-c", CLI, "train", kind, "--dataset", v.ref, "--model", tiny_model,
                              "--set", "max_steps=2", "--output-dir", str(tmp_path / "out")],
                             stdout=subprocess.PIPE, stderr=log, env=env, timeout=600, check=False)
        log.seek(0)
        err = log.read().decode()
    assert res.returncode == 0, err[-3000:]
    assert "\r" not in err, err[:2000]
    assert "\x1b" not in err, err[:2000]
    assert "Warning" not in err and "trl.experimental" not in err and "remove_unused_columns" not in err, err
    assert "LOAD REPORT" not in err, err  # a reward model's new score head is expected, not news
    # The default line interval is 30 s; a 2-step run still shows its first loss and its last.
    steps = [int(m.group(1)) for m in re.finditer(r"^training on toy@v1: (\d)/2 steps \([\d.]+/s, loss [\d.]+",
                                                  err, re.MULTILINE)]
    assert steps == [1, 2], err


def test_progress_first_note_prints_off_a_terminal_and_closes():
    from prefdata.progress import progress_bar

    quiet, first = io.StringIO(), io.StringIO()
    for stream, first_note in ((quiet, False), (first, True)):
        with progress_bar("training", 3, unit="steps", every=30, stream=stream, first_note=first_note) as advance:
            advance(1, "loss 0.6931")
            advance(1, "loss 0.6900")
            advance(1)
    assert quiet.getvalue() == ""  # a short pass without first_note stays quiet, as before
    lines = first.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("training: 1/3 steps") and "loss 0.6931" in lines[0]
    assert lines[1].startswith("training: 3/3 steps")  # the closing line


def test_quiet_logs_off_a_terminal_only_and_strips_ansi_from_records(monkeypatch, caplog):
    import logging

    from prefdata import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for key in (*progress._NO_BARS, "TRL_EXPERIMENTAL_SILENCE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored after
    progress.quiet_logs(Tty())
    assert os.environ["TRL_EXPERIMENTAL_SILENCE"] == "1"  # everywhere
    assert "TQDM_DISABLE" not in os.environ  # a terminal keeps its bars
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "0")  # the user's choice wins
    progress.quiet_logs(io.StringIO())
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "0"
    progress.quiet_logs(io.StringIO())  # idempotent: one factory, not a chain
    with caplog.at_level(logging.WARNING):
        logging.getLogger("transformers.modeling_utils").warning("\x1b[1mLOAD REPORT\x1b[0m from: %s", "\x1b[31mx")
    assert caplog.records[-1].getMessage() == "LOAD REPORT from: x"


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("history", [
    [{"loss": 0.69, "step": 1}, {"loss": 0.68, "step": 2}, {"eval_loss": 0.6931, "step": 2}],  # one eval
    [{"loss": 0.69 - i / 1000, "step": i} for i in range(1, 200)] + [{"eval_loss": 0.6, "step": 199}],
    [{"loss": 0.7, "step": 5}],  # a one-step run
])
def test_curve_ticks_are_whole_steps_that_do_not_overlap(history):
    import matplotlib.pyplot as plt

    from trainers.plots import draw_curves

    fig = draw_curves(history)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
            assert labels, ax.get_title()
            assert all(re.fullmatch(r"\d+", t.get_text()) for t in labels), [t.get_text() for t in labels]
            boxes = [t.get_window_extent(renderer) for t in labels]
            assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), \
                [t.get_text() for t in labels]
        eval_axes = [ax for ax in fig.axes if ax.get_title() == "eval_loss"]
        if eval_axes and len({h["step"] for h in history if "eval_loss" in h}) == 1:
            assert [t.get_text() for t in eval_axes[0].get_xticklabels()] == [str(history[-1]["step"])]
    finally:
        plt.close(fig)


def test_load_report_dropped_only_when_it_names_just_the_new_reward_head():
    import logging

    from trainers.common import _ExpectedHeadReport

    def report(*rows):
        table = "\n".join(f"{k} | {st} | " for k, st in rows)
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0,
                                 f"LlamaForSequenceClassification LOAD REPORT from: m\nKey | Status |\n{table}\n",
                                 None, None)

    quiet = _ExpectedHeadReport()
    assert not quiet.filter(report(("score.weight", "MISSING"), ("lm_head.weight", "UNEXPECTED")))
    assert quiet.filter(report(("score.weight", "MISSING"), ("model.layers.0.mlp.up_proj.weight", "MISSING")))
    assert quiet.filter(report(("score.weight", "MISMATCH")))
    assert quiet.filter(logging.LogRecord("x", logging.WARNING, "", 0, "another warning", None, None))
