"""`prefdata datasets …`: list, show, log, diff, export and import versions."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
console = Console()


def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


@app.command("list")
def list_cmd(name: str = typer.Argument(None, help="Only this dataset's versions.")):
    """Every committed version, oldest first; a corrupt one is marked and the listing goes on."""
    from prefdata.store import Corrupt, scan

    t = Table("ref", "kind", "rows", "content hash", "created", "parents")
    for v in scan(name):
        if isinstance(v, Corrupt):
            _warn(f"{v.ref} is corrupt: {v.reason}")
            t.add_row(v.ref, "CORRUPT", "-", "-", "-", "-")
            continue
        rows = sum(s["rows"] for s in v.manifest["splits"].values())
        t.add_row(v.ref, v.manifest["kind"], str(rows), v.sha[:12], v.manifest["created"],
                  ", ".join(str(p) for p in v.manifest.get("parents") or []))
    console.print(t)


_NO_VERIFY = typer.Option(False, "--no-verify", help="Skip recomputing checksums (large versions).")


@app.command("show")
def show_cmd(ref: str, no_verify: bool = _NO_VERIFY):
    """A version's manifest summary and card path, its checksums verified first."""
    from prefdata.store import resolve, verify

    v = resolve(ref)
    if not no_verify:
        verify(v)
    m = v.manifest
    console.print(f"[bold]{v.ref}[/]  sha:{v.sha[:16]}  kind={m['kind']}", markup=True)
    for s, info in m["splits"].items():
        console.print(f"  {s}: {info['rows']} rows")
    dups = m.get("duplicates") or {}
    if any(d.get("ids") or d.get("rows") for d in dups.values()):
        console.print(f"  duplicates: {sum(d.get('ids', 0) for d in dups.values())} ids, "
                      f"{sum(d.get('rows', 0) for d in dups.values())} rows")
    console.print(f"  parents: {', '.join(str(p) for p in m.get('parents') or []) or '(none)'}", markup=False)
    lin = m.get("lineage") or {}
    for k in ("engine", "model", "templates", "seeds"):
        if lin.get(k):
            console.print(f"  {k}: {json.dumps(lin[k]) if isinstance(lin[k], dict) else lin[k]}", markup=False)
    if m.get("command"):
        console.print(f"  command: {m['command']}", markup=False)
    console.print(f"  path: {v.path}", markup=False)
    console.print(f"  card: {v.card_path}", markup=False)
    console.print("  checksums: not verified (--no-verify)" if no_verify
                  else f"  checksums: verified ({len(m['files'])} files, row counts match)")


@app.command("log")
def log_cmd(ref: str, no_verify: bool = _NO_VERIFY):
    """Ancestry down to the prompt sets, each version's checksums verified."""
    from prefdata.errors import PrefdataError
    from prefdata.store import Corrupt, CorruptVersion, log, verify

    bad = []
    for depth, node in log(ref):
        pad = "  " * depth
        if isinstance(node, str):
            console.print(f"{pad}└ {node}", markup=False)
            continue
        if isinstance(node, Corrupt):
            bad.append(node.ref)
            console.print(f"{pad}└ {node.ref} CORRUPT: {node.reason}", markup=False)
            continue
        status = "not verified"
        if not no_verify:
            try:
                verify(node)
                status = "verified"
            except CorruptVersion as e:
                bad.append(node.ref)
                status = f"CORRUPT: {e.reason}"
        step = (node.manifest.get("lineage") or {}).get("step") or {}
        uses = step.get("uses", "") if isinstance(step, dict) else ""
        console.print(f"{pad}└ {node.ref} sha:{node.sha[:12]} {uses} {node.manifest['created']} [{status}]",
                      markup=False)
    if bad:
        raise PrefdataError(f"corrupt in the ancestry of {ref}: {', '.join(dict.fromkeys(bad))}")


@app.command("verify")
def verify_cmd(ref: str = typer.Argument(None, help="A version ref, or with --all a dataset name."),
               all_: bool = typer.Option(False, "--all", help="Every version (of REF's name, if given).")):
    """Recompute every checksum and row count; exit 1 if any version is corrupt."""
    from prefdata.errors import PrefdataError
    from prefdata.store import Corrupt, CorruptVersion, check_name, resolve, scan, verify

    if all_:
        entries = scan(check_name(ref) if ref else None)
    elif ref:
        try:
            entries = [resolve(ref)]
        except CorruptVersion as e:
            entries = [Corrupt(*e.ref.partition("@")[::2], path=Path(), reason=e.reason)]
    else:
        raise PrefdataError("give a version ref (name@v3) or --all")
    bad = []
    for v in entries:
        reason = v.reason if isinstance(v, Corrupt) else None
        if reason is None:
            try:
                verify(v)
            except CorruptVersion as e:
                reason = e.reason
        if reason is None:
            typer.echo(f"ok       {v.ref}")
        else:
            bad.append(v.ref)
            typer.echo(f"CORRUPT  {v.ref}: {reason}")
    if bad:
        raise PrefdataError(f"{len(bad)} of {len(entries)} versions corrupt: {', '.join(bad)}")


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
               on_error: str = typer.Option("raise", "--on-error", help="raise | quarantine"),
               dedup: bool = typer.Option(False, "--dedup", help="Drop rows repeating an earlier id or content.")):
    """Validate a file and commit it as a new version (HH transcripts and TRL formats accepted)."""
    from prefdata import io
    from prefdata.store import check_name, commit, quarantine_path
    from prefdata.store import dedup as drop_duplicates

    # The name is checked before the input is even opened: it becomes part of paths.
    check_name(name)
    quarantine = quarantine_path(name) if on_error == "quarantine" else None
    table = io.read(source, kind, on_error=on_error, quarantine_path=quarantine)
    kind = kind or io.infer_kind(table.column_names)
    step = {"uses": "import", "source": source}
    if dedup:
        table, dropped = drop_duplicates(table)
        step["dedup_dropped"] = dropped
        typer.echo(f"dropped {dropped} duplicate rows", err=True)
    parent = source if "@" in source and not Path(source).exists() else str(Path(source).resolve())
    v = commit(name, table, kind=kind, lineage={"parents": [parent], "step": step},
               command=f"prefdata datasets import {source} --name {name}" + (" --dedup" if dedup else ""))
    typer.echo(f"{v.ref}  card: {v.card_path}")
