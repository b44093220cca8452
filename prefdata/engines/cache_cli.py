"""`prefdata cache clear`: delete the request and feature caches (the remedy the corrupt-cache error names).

Caches only ever hold work that can be redone: clearing one costs regeneration time, never data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from prefdata.errors import PrefdataError

app = typer.Typer(no_args_is_help=True)

# SQLite keeps a WAL and a shared-memory index beside each database; both go with it.
_SIDECARS = ("", "-wal", "-shm", "-journal")


def _remove(db: Path) -> list[Path]:
    gone = []
    for suffix in _SIDECARS:
        f = db.with_name(db.name + suffix)
        if f.is_file() or f.is_symlink():
            try:
                f.unlink()
            except OSError as e:
                raise PrefdataError(f"cannot delete {f}: {e.strerror or e}") from None
            gone.append(f)
    return gone


@app.command("clear")
def clear(path: Path = typer.Argument(None, help="A cache file (an engine.cache_path); default: every cache "
                                                 "under $PREFDATA_HOME/cache")):
    """Delete the request cache and the feature cache (or the one file given)."""
    from prefdata.store import home

    if path is not None:
        if path.is_dir():
            raise PrefdataError(f"{path} is a folder; name the cache file (e.g. {path / 'requests.sqlite'})")
        targets = [path]
    else:
        cache_dir = home() / "cache"
        targets = sorted(p for p in cache_dir.glob("*.sqlite")) if cache_dir.is_dir() else []
    gone = [f for t in targets for f in _remove(t)]
    # A crashed Ray run's worker shards would otherwise be merged back in by the next run.
    from prefdata.engines.cache import shard_dir

    for t in targets:
        d = shard_dir(t)
        if d.is_dir():
            try:
                shutil.rmtree(d)
            except OSError as e:
                raise PrefdataError(f"cannot delete {d}: {e.strerror or e}") from None
            gone.append(d)
    if not gone:
        typer.echo("no cache files to clear")
        return
    for f in gone:
        typer.echo(f"removed {f}")
