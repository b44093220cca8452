"""Versioned dataset store. See `core.py` for the layout and guarantees."""

from prefdata.store.checks import Deduper, dedup, duplicate_counts
from prefdata.store.core import (Corrupt, CorruptVersion, Version, VersionWriter, check_name, commit, content_hash,
                                 datasets_dir, home, list_versions, load, load_table, resolve, scan, verify,
                                 verify_ref)
from prefdata.store.ops import diff, export, label_filter, log
from prefdata.store.paths import named_path, quarantine_path, safe_path

__all__ = ["Corrupt", "CorruptVersion", "Deduper", "Version", "VersionWriter", "check_name", "commit", "content_hash",
           "datasets_dir", "dedup", "diff", "duplicate_counts", "export", "home", "label_filter", "list_versions", "load",
           "load_table", "log", "named_path",
           "quarantine_path", "resolve", "safe_path", "scan", "verify", "verify_ref"]
