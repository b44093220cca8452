"""The `prefdata` command. Sub-apps live beside the code they drive and are mounted here.

Errors the user can fix (PrefdataError) print as one line and exit 1; `--debug` shows the
traceback. Anything else is a bug and always shows its traceback.
"""

from __future__ import annotations

import sys

import typer

from prefdata.errors import PrefdataError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Synthesize, judge, clean and version preference data, and train on it.")

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _DEBUG["on"] = debug


def _mount() -> None:
    # Imported lazily so `prefdata --help` stays fast and a broken optional part cannot
    # take the whole CLI down.
    from prefdata.store.cli import app as datasets_app
    from prefdata.models import app as models_app
    from prefdata.pipeline import register as register_run

    app.add_typer(datasets_app, name="datasets", help="List, inspect, diff and export dataset versions.")
    app.add_typer(models_app, name="models", help="Prepare and inspect models (the embedded default).")
    register_run(app)
    for optional in ("trainers.cli", "prefdata.curation.cli"):
        try:
            mod = __import__(optional, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name and optional.startswith(e.name):
                continue
            raise
        mod.register(app)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _mount()
    try:
        app(args=argv, standalone_mode=False)
    except PrefdataError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        raise SystemExit(code)
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            raise SystemExit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            raise SystemExit(130)
        raise


if __name__ == "__main__":
    main()
