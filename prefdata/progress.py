"""Progress for long passes that reaches logs too.

On a terminal: a rich bar with rate and ETA. Off a terminal (nohup, CI, a pipe): one plain line on
stderr every `every` seconds with rows done, rate and ETA, so a log shows the pass is alive.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, *, unit: str = "rows", disable: bool = False, every: float = 30.0,
                 stream=None):
    """Yields `advance(n)`. Nothing is shown when disabled or when there is nothing to do."""
    stream = stream or sys.stderr
    if disable or total <= 0:
        yield lambda n=1: None
        return
    if getattr(stream, "isatty", lambda: False)():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n=1: bar.update(task, advance=n)
        return
    start = last = time.monotonic()
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every or done >= total:
            last = now
            rate = done / max(now - start, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            print(f"{label}: {done}/{total} {unit} ({rate:.1f}/s, eta {eta:.0f}s)", file=stream, flush=True)

    yield advance
