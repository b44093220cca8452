"""`prefdata datasets …`: list, show, log, diff, export and import versions."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_cmd(name: str = typer.Argument(None, help="Only this dataset's versions.")):
    """Every committed version, oldest first."""
    from prefdata.store import list_versions

    t = Table("ref", "kind", "rows", "content hash", "created", "parents")
    for v in list_versions(name):
        rows = sum(s["rows"] for s in v.manifest["splits"].values())
        t.add_row(v.ref, v.manifest["kind"], str(rows), v.sha[:12], v.manifest["created"],
                  ", ".join(v.manifest.get("parents") or []))
    console.print(t)


@app.command("show")
def show_cmd(ref: str):
    """A version's manifest summary and card path."""
    from prefdata.store import resolve

    v = resolve(ref)
    m = v.manifest
    console.print(f"[bold]{v.ref}[/]  sha:{v.sha[:16]}  kind={m['kind']}")
    for s, info in m["splits"].items():
        console.print(f"  {s}: {info['rows']} rows")
    console.print(f"  parents: {', '.join(m.get('parents') or []) or '(none)'}")
    lin = m.get("lineage") or {}
    for k in ("engine", "model", "templates", "seeds"):
        if lin.get(k):
            console.print(f"  {k}: {json.dumps(lin[k]) if isinstance(lin[k], dict) else lin[k]}")
    if m.get("command"):
        console.print(f"  command: {m['command']}")
    console.print(f"  path: {v.path}")
    console.print(f"  card: {v.card_path}")


@app.command("log")
def log_cmd(ref: str):
    """Ancestry down to the prompt sets."""
    from prefdata.store import log

    for depth, node in log(ref):
        pad = "  " * depth
        if isinstance(node, str):
            console.print(f"{pad}└ {node}")
        else:
            step = (node.manifest.get("lineage") or {}).get("step") or {}
            console.print(f"{pad}└ [bold]{node.ref}[/] sha:{node.sha[:12]} {step.get('uses', '')} "
                          f"{node.manifest['created']}")


@app.command("diff")
def diff_cmd(a: str, b: str, split: str = "train"):
    """Rows added/removed (by id), schema and lineage differences."""
    from prefdata.store import diff

    d = diff(a, b, split)
    console.print(f"{d['a']} → {d['b']}: rows {d['rows'][d['a']]} → {d['rows'][d['b']]}")
    console.print(f"  added: {len(d['added_ids'])}  removed: {len(d['removed_ids'])}")
    for k in ("columns_added", "columns_removed", "columns_retyped", "columns_changed_on_shared_rows",
              "lineage_changed"):
        if d[k]:
            console.print(f"  {k.replace('_', ' ')}: {', '.join(d[k])}")


@app.command("export")
def export_cmd(ref: str,
               format: str = typer.Option("conversational", "--format",
                                          help="standard | conversational (TRL), jsonl | parquet (full schema)"),
               out: Path = typer.Option(..., "--out", help="Output file (.jsonl or .parquet)."),
               split: str = "train"):
    """Export a version to TRL's formats or our full schema."""
    from prefdata.store import export

    path = export(ref, out, format, split)
    console.print(f"wrote {path}")


@app.command("import")
def import_cmd(source: str = typer.Argument(..., help="File, HF datasets folder or store ref."),
               name: str = typer.Option(..., "--name", help="Store dataset name to commit under."),
               kind: str = typer.Option(None, help="pair | prompt | completion | unpaired (inferred if absent)"),
               on_error: str = typer.Option("raise", "--on-error", help="raise | quarantine")):
    """Validate a file and commit it as a new version (HH transcripts and TRL formats accepted)."""
    from prefdata import io
    from prefdata.store import commit, home

    quarantine = home() / "quarantine" / f"{name}.jsonl"
    table = io.read(source, kind, on_error=on_error, quarantine_path=quarantine)
    kind = kind or io.infer_kind(table.column_names)
    parent = source if "@" in source and not Path(source).exists() else str(Path(source).resolve())
    v = commit(name, table, kind=kind, lineage={"parents": [parent], "step": {"uses": "import", "source": source}},
               command=f"prefdata datasets import {source} --name {name}")
    typer.echo(f"{v.ref}  card: {v.card_path}")
