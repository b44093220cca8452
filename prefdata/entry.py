"""Running a Typer app the way every prefdata command runs: one line on stderr per failure, exit
codes for interrupts, credentials redacted. A leaf below every CLI module, so `prefdata` itself
(prefdata.cli) and `python -m trainers.<kind>` (trainers.cli) share it without importing each other.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

import typer

from prefdata import interrupts
from prefdata.errors import PrefdataError
from prefdata.progress import quiet_logs
from prefdata.redact import install_log_filter, redact


def _one_line(msg: str) -> str:
    return " ".join(redact(str(msg)).split()) or "unknown error"


def _fail(msg: str, code: int = 1) -> None:
    print(f"error: {_one_line(msg)}", file=sys.stderr)
    raise SystemExit(code)


def _os_error(e: OSError) -> str:
    """One line naming the path: disk full, read-only home, a folder where nothing can be created."""
    reason = e.strerror or errno.errorcode.get(e.errno or 0) or type(e).__name__
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    hint = {errno.ENOSPC: "free some space and rerun", errno.EROFS: "choose a writable PREFDATA_HOME or --out",
            errno.EACCES: "check the permissions", errno.EPERM: "check the permissions"}.get(e.errno)
    where = " -> ".join(str(p) for p in paths) if paths else "(no path given by the system)"
    return f"{where}: {reason}" + (f"; {hint}" if hint else "")


def _click_exceptions() -> tuple[tuple, tuple]:
    """Click's usage-error and abort classes: the installed click's and, for typer versions that vendor
    their own copy (typer._click), that copy's too; an isinstance on one misses the other."""
    import click

    usage, abort = [click.exceptions.ClickException], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        vendored = None
    if vendored is not None:
        usage.append(vendored.ClickException)
        if hasattr(vendored, "Abort"):
            abort.append(vendored.Abort)
    return tuple(usage), tuple(abort)


def _interrupted() -> None:
    print(interrupts.message(), file=sys.stderr)
    raise SystemExit(interrupts.exit_code())


def run_app(app: typer.Typer, argv: list[str], mount: Callable[[], None] = lambda: None) -> None:
    """Run `app` on argv; `mount` adds sub-commands lazily, inside the error handling."""
    argv = list(argv)
    debug = "--debug" in argv
    install_log_filter()
    quiet_logs()  # off a terminal: no tqdm bars, no ANSI escapes in a log
    with interrupts.handling():
        try:
            mount()
            # Typer turns KeyboardInterrupt into a returned 130 (not raised) in this mode.
            # prog_name fixed: click derives the shell-completion variable (_PREFDATA_COMPLETE) and the
            # usage line from it, and would otherwise take `pytest` or `python -m …` from the process.
            rv = app(args=argv, standalone_mode=False, prog_name="prefdata")
        except PrefdataError as e:
            if debug:
                raise
            _fail(str(e))
        except KeyboardInterrupt:
            _interrupted()
        except (typer.Exit, SystemExit) as e:
            code = getattr(e, "exit_code", getattr(e, "code", 0))
            raise SystemExit(code)
        except typer.Abort as e:
            # Typer raises Abort for an EOFError anywhere, e.g. a truncated .gz being read.
            if interrupts.received():
                _interrupted()
            if debug:
                raise
            cause = e.__cause__ or e.__context__
            _fail(f"unexpected end of input ({type(cause).__name__}: {cause})" if cause else "aborted")
        except OSError as e:
            if debug:
                raise
            _fail(_os_error(e))
        except Exception as e:
            usage, abort = _click_exceptions()
            if isinstance(e, usage):  # usage errors: a missing option, an unknown flag
                e.show()
                raise SystemExit(e.exit_code)
            if isinstance(e, abort):
                _interrupted()
            if debug:
                raise
            # A bug, not the user's fault: still one line, but one that says how to see the traceback.
            _fail(f"internal error ({type(e).__name__}: {e}); please report it with the output of "
                  "the same command run with --debug")
    if interrupts.received() or rv == 130:
        _interrupted()
    if isinstance(rv, int) and not isinstance(rv, bool) and rv:
        raise SystemExit(rv)
