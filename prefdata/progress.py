"""Progress for long passes that reaches logs too.

On a terminal: a rich bar with rate and ETA. Off a terminal (nohup, CI, a pipe): one plain line on
stderr every `every` seconds (default 30, or $PREFDATA_PROGRESS_EVERY) with rows done, rate and ETA,
so a log shows the pass is alive. A pass shorter than `every` prints nothing off a terminal; a longer
one also prints a closing line.

Bars nest: a bar opened while another is live (a judge voter around the engine's scoring) becomes
a second row of the same rich display, since rich allows only one live display at a time.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager

from prefdata.errors import ConfigError

# The rich Progress currently on screen and how many bars share it.
_LIVE: dict = {"bar": None, "users": 0}


def _isatty(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def _rich_bar(stream):
    import rich.progress as rp
    from rich.console import Console
    from rich.text import Text

    class Rate(rp.ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f}/s" if task.speed else "-/s")

    return rp.Progress(rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("{task.fields[unit]}"), Rate(), rp.TextColumn("{task.fields[note]}"),
                       rp.TimeRemainingColumn(), console=Console(file=stream), transient=True,
                       # Output meant for stdout must stay there when stdout is a pipe and only stderr
                       # shows the bar; rich would otherwise route it through the bar's console.
                       redirect_stdout=_isatty(sys.stdout))


@contextmanager
def _on_terminal(label: str, total: int, unit: str, stream):
    owner = _LIVE["bar"] is None
    if owner:
        _LIVE["bar"] = _rich_bar(stream)
        _LIVE["bar"].start()
    bar = _LIVE["bar"]
    _LIVE["users"] += 1
    task = bar.add_task(label, total=total, unit=unit, note="")
    try:
        yield lambda n=1, note=None: bar.update(task, advance=n, **({"note": note} if note is not None else {}))
    finally:
        # Draw the final state once before the task goes: a pass shorter than rich's refresh
        # interval would otherwise never show its last count and note.
        bar.refresh()
        bar.remove_task(task)
        _LIVE["users"] -= 1
        if owner:
            bar.stop()
            _LIVE["bar"] = None


def _fmt_eta(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def default_every() -> float:
    """Seconds between plain progress lines: $PREFDATA_PROGRESS_EVERY, else 30."""
    raw = os.environ.get("PREFDATA_PROGRESS_EVERY", "30")
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:  # also catches NaN
        raise ConfigError(f"PREFDATA_PROGRESS_EVERY must be a number of seconds >= 0, got '{raw}'")
    return every


@contextmanager
def progress_bar(label: str, total: int, *, unit: str = "rows", disable: bool = False, every: float | None = None,
                 stream=None, first_note: bool = False):
    """Yields `advance(n=1, note=None)`; `note` is a short extra (e.g. "812 tok/s") shown beside the
    count; `advance(0, note)` only changes the note. Nothing is shown when disabled or when there is
    nothing to do. `first_note`: off a terminal, the first advance that carries a note also prints
    its line (and so the pass its closing line): training shows its first loss even in a short run."""
    stream = stream or sys.stderr
    every = default_every() if every is None else every
    if disable or total <= 0:
        yield lambda n=1, note=None: None
        return
    if _isatty(stream):
        with _on_terminal(label, total, unit, stream) as advance:
            yield advance
        return
    start = time.monotonic()
    state = {"done": 0, "last": start, "printed": False}
    lock = threading.Lock()  # the openai engine advances from its request callbacks

    def advance(n: int = 1, note: str | None = None) -> None:
        with lock:
            state["done"] += n
            done, now = state["done"], time.monotonic()
            # Periodic lines only; the closing line only for a pass that already spoke, so a short
            # pass (or each chunk of a nested one) leaves the log quiet.
            # advance(0, note) changes only the note: a line then would repeat the last count.
            first = first_note and note is not None and not state["printed"]
            if n and (now - state["last"] >= every or first or (done >= total and state["printed"])):
                state["last"], state["printed"] = now, True
                rate = done / max(now - start, 1e-9)
                eta = (total - done) / rate if rate > 0 else float("inf")
                extra = f", {note}" if note else ""
                print(f"{label}: {done}/{total} {unit} ({rate:.1f}/s{extra}, eta {_fmt_eta(eta)})",
                      file=stream, flush=True)

    yield advance


# ----------------------------------------------------------------------------- logs

# A CSI escape (colour, bold, cursor movement): what a terminal interprets and a log file shows as noise.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")

# Off a terminal: tqdm bars off in the HF libraries (Map, Loading weights, Writing model shards, GGUF
# conversion) and in tqdm itself. Env vars, so that libraries imported later and child processes (engine
# and Ray workers) see them too; a value the user set wins.
_NO_BARS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _strip_ansi_records() -> None:
    """Log records lose their ANSI escapes (transformers prints its load report in bold), whatever
    logger or handler they go through: a record factory sees every record before any handler."""
    import logging

    old = logging.getLogRecordFactory()
    if getattr(old, "_prefdata_no_ansi", False):
        return

    def factory(*args, **kwargs):
        record = old(*args, **kwargs)
        if isinstance(record.msg, str) and "\x1b" in record.msg:
            record.msg = strip_ansi(record.msg)
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(strip_ansi(a) if isinstance(a, str) else a for a in record.args)
        return record

    factory._prefdata_no_ansi = True
    logging.setLogRecordFactory(factory)


def quiet_logs(stream=None) -> None:
    """Once at CLI start (prefdata.entry), so that a log read later is plain lines.

    Everywhere: TRL's notice that `trl.experimental` was imported is silenced; prefdata imports it (ORPO),
    not the user, who can do nothing about it.
    Off a terminal (a log file, CI, a pipe): no tqdm bars, which redraw with carriage returns into one
    long garbled line (prefdata's own progress lines report long passes instead), and no ANSI escapes
    in log records. On a terminal the bars and colours stay."""
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore", message=r"You are importing from 'trl\.experimental'")
    if _isatty(stream or sys.stderr):
        return
    for key, value in _NO_BARS.items():
        os.environ.setdefault(key, value)
    _strip_ansi_records()
    # Libraries already imported (a test process, a command that imported them early) read their env
    # var at import: tell them directly, unless the user set the variable to keep the bars.
    off = {k: os.environ[k].strip().lower() in ("1", "true", "yes", "on") for k in _NO_BARS}
    if off["HF_HUB_DISABLE_PROGRESS_BARS"] and "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    if off["HF_HUB_DISABLE_PROGRESS_BARS"] and "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if off["HF_DATASETS_DISABLE_PROGRESS_BARS"] and "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
