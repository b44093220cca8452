"""The `prefdata` command. Sub-apps live beside the code they drive and are mounted here.

Every failure ends in one line on stderr and a non-zero exit, with credentials redacted:
errors the user can fix (PrefdataError), the environment's (OSError: disk full, read-only home,
naming the path) and interrupts (SIGINT 130, SIGTERM 143: "interrupted, rerun to resume from the
cache"). Anything else is a bug: one line that says so; `--debug` shows the traceback of any error.
"""

from __future__ import annotations

import sys

import typer

from prefdata.entry import run_app

# add_completion: `prefdata --install-completion` sets up <TAB> for the current shell; dataset refs and
# step names come from prefdata.completion.
app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
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
    from prefdata.run_cli import register as register_run
    from prefdata.datasets_cli import app as datasets_app

    app.add_typer(datasets_app, name="datasets", help="List, inspect, diff and export dataset versions.")
    app.add_typer(models_app, name="models", help="Prepare and inspect models (the embedded default).")
    app.add_typer(cache_app, name="cache", help="Clear the request and feature caches.")
    register_run(app)
    # Plain imports (the import graph sees them); neither imports this module back.
    from prefdata.curation.cli import register as register_curation
    from prefdata.evals.cli import register as register_evals
    from trainers.cli import register as register_train

    register_train(app)
    register_curation(app)
    register_evals(app)  # after curation: it adds `policy` and `ranking` to curation's `eval` group
    from prefdata.review.cli import register as register_review
    register_review(app)
    from prefdata.doctor import doctor

    app.command("doctor")(doctor)
    _MOUNTED["done"] = True


def main(argv: list[str] | None = None) -> None:
    run_app(app, list(sys.argv[1:] if argv is None else argv), _mount)


if __name__ == "__main__":
    main()
