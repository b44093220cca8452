"""The `prefdata` command. Sub-apps live beside the code they drive and are mounted here.

Every failure ends in one line on stderr and a non-zero exit, with credentials redacted:
errors the user can fix (PrefdataError), the environment's (OSError: disk full, read-only home,
naming the path) and interrupts (SIGINT 130, SIGTERM 143: "interrupted, rerun to resume from the
cache"). Anything else is a bug: one line that says so; `--debug` shows the traceback of any error.
"""

from __future__ import annotations

import errno
import sys

import typer

from prefdata import interrupts
from prefdata.errors import PrefdataError
from prefdata.redact import install_log_filter, redact

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Synthesize, judge, clean and version preference data, and train on it.")

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _DEBUG["on"] = debug


_MOUNTED = {"done": False}


def _mount() -> None:
    # Imported lazily so `prefdata --help` stays fast and a broken optional part cannot
    # take the whole CLI down. Once per process: main() may be called many times in-process.
    if _MOUNTED["done"]:
        return
    from prefdata.engines.cache_cli import app as cache_app
    from prefdata.models import app as models_app
    from prefdata.pipeline import register as register_run
    from prefdata.store.cli import app as datasets_app

    app.add_typer(datasets_app, name="datasets", help="List, inspect, diff and export dataset versions.")
    app.add_typer(models_app, name="models", help="Prepare and inspect models (the embedded default).")
    app.add_typer(cache_app, name="cache", help="Clear the request and feature caches.")
    register_run(app)
    for optional in ("trainers.cli", "prefdata.curation.cli"):
        try:
            mod = __import__(optional, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name and optional.startswith(e.name):
                continue
            raise
        mod.register(app)
    _MOUNTED["done"] = True


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


def _interrupted() -> None:
    print(interrupts.MESSAGE, file=sys.stderr)
    raise SystemExit(interrupts.exit_code())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    install_log_filter()
    with interrupts.handling():
        try:
            _mount()
            # Typer turns KeyboardInterrupt into a returned 130 (not raised) in this mode.
            rv = app(args=argv, standalone_mode=False)
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
            import click

            if isinstance(e, click.exceptions.ClickException):  # usage errors
                e.show()
                raise SystemExit(e.exit_code)
            if isinstance(e, click.exceptions.Abort):
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


if __name__ == "__main__":
    main()
