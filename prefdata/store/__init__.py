"""Versioned dataset store. See `core.py` for the layout and guarantees."""

from prefdata.store.core import (Version, commit, content_hash, datasets_dir, home, list_versions, load,
                                 load_table, resolve, verify)
from prefdata.store.ops import diff, export, log

__all__ = ["Version", "commit", "content_hash", "datasets_dir", "diff", "export", "home", "list_versions",
           "load", "load_table", "log", "resolve", "verify"]
