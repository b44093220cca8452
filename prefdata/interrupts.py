"""SIGINT and SIGTERM: stop at once, but never in the middle of a commit.

The CLI installs `handling()`: either signal raises KeyboardInterrupt (so every `finally` and every
library's own interrupt handling runs: the OpenAI engine cancels its workers, progress bars close)
and records which signal it was, so `prefdata` can exit 130 or 143 with one line. Work done so far
is safe in the request cache, so a rerun resumes.

`deferred()` wraps the commits of a step: a signal that arrives inside is held until the block ends,
so a step's versions (its side tables and its main table) are written whole or not started.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state: dict = {"signum": None, "defer": 0, "pending": None, "message": None}
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MESSAGE = "interrupted, rerun to resume from the cache"


def set_message(text: str) -> None:
    """What the CLI prints when this command is stopped (a server: stopping is how it ends)."""
    _state["message"] = text


def message() -> str:
    return _state["message"] or MESSAGE


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum, frame):
    _state["signum"] = signum
    if _state["defer"]:
        _state["pending"] = signum
        return
    raise KeyboardInterrupt


def received() -> int | None:
    """The signal that interrupted this process, if one did (None for an interrupt not from a signal)."""
    return _state["signum"]


def exit_code() -> int:
    """128 + the signal number, as shells report it: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + (_state["signum"] or signal.SIGINT)


@contextlib.contextmanager
def handling():
    """Install the handlers for the duration (restored after, so in-process callers are unaffected)."""
    if not _main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    _state.update(signum=None, defer=0, pending=None, message=None)
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM until the block ends, then deliver it. Nests; a no-op off the main thread."""
    if not _main_thread():
        yield
        return
    ours = all(signal.getsignal(s) is _handler for s in _SIGNALS)
    old = {} if ours else {s: signal.getsignal(s) for s in _SIGNALS}
    for s in old:  # called as a library, without the CLI's handlers: borrow them for the block
        signal.signal(s, _handler)
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
        for s, h in old.items():
            signal.signal(s, h)
        pending = _state["pending"] if not _state["defer"] else None
        if pending is not None:
            _state["pending"] = None
            if old:
                signal.raise_signal(pending)  # to whatever handled it before (default: die / KeyboardInterrupt)
            else:
                raise KeyboardInterrupt
