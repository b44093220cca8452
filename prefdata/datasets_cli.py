"""`prefdata datasets …`: list, show, log, diff, export and import versions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefdata.store.paths import complete_ref

app = typer.Typer(no_args_is_help=True)


def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


_JSON = typer.Option(False, "--json", help="Print one JSON document (schema in docs/CLI_JSON.md).")
_WIDE = typer.Option(False, "--wide", help="On a terminal, lay the table out at full width (no folding).")
_REF = typer.Argument(..., help="A version: name@vN, name@latest, name or name@sha:<prefix>.",
                      autocompletion=complete_ref)
# Each --json document names its schema; the number changes only when a key is removed or retyped.
SCHEMA = "prefdata.datasets.{}/1"


def _version_json(v) -> dict:
    from prefdata.store import Corrupt

    if isinstance(v, Corrupt):
        return {"ref": v.ref, "name": v.name, "version": v.version, "corrupt": True, "reason": v.reason,
                "kind": None, "rows": None, "splits": {}, "content_hash": None, "created": None, "parents": [],
                "path": str(v.path)}
    m = v.manifest
    splits = {s: info["rows"] for s, info in m["splits"].items()}
    return {"ref": v.ref, "name": v.name, "version": v.version, "corrupt": False, "reason": None,
            "kind": m["kind"], "rows": sum(splits.values()), "splits": splits, "content_hash": v.sha,
            "created": m["created"], "parents": [str(p) for p in m.get("parents") or []], "path": str(v.path)}


@app.command("list")
def list_cmd(name: str = typer.Argument(None, help="Only this dataset's versions.", autocompletion=complete_ref),
             as_json: bool = _JSON, wide: bool = _WIDE):
    """Every committed version, oldest first; a corrupt one is marked and the listing goes on."""
    from prefdata.store import scan
    from prefdata.tables import print_json, print_table

    entries = [_version_json(v) for v in scan(name)]
    for e in entries:
        if e["corrupt"]:
            _warn(f"{e['ref']} is corrupt: {e['reason']}")
    if as_json:
        print_json({"schema": SCHEMA.format("list"), "versions": entries})
        return
    print_table(["ref", "kind", "rows", "content hash", "created", "parents"],
                [[e["ref"], "CORRUPT", "-", "-", "-", "-"] if e["corrupt"] else
                 [e["ref"], e["kind"], e["rows"], e["content_hash"][:12], e["created"], ", ".join(e["parents"])]
                 for e in entries], wide=wide)


_NO_VERIFY = typer.Option(False, "--no-verify", help="Skip recomputing checksums (large versions).")


@app.command("show")
def show_cmd(ref: str = _REF, no_verify: bool = _NO_VERIFY, as_json: bool = _JSON):
    """A version's manifest summary and card path, its checksums verified first."""
    from prefdata.store import resolve, verify
    from prefdata.tables import print_json

    v = resolve(ref)
    if not no_verify:
        verify(v)
    m = v.manifest
    dups = m.get("duplicates") or {}
    dup_ids, dup_rows = sum(d.get("ids", 0) for d in dups.values()), sum(d.get("rows", 0) for d in dups.values())
    parents = [str(p) for p in m.get("parents") or []]
    lin = m.get("lineage") or {}
    if as_json:
        doc = _version_json(v)
        doc.update(schema=SCHEMA.format("show"), duplicates={"ids": dup_ids, "rows": dup_rows},
                   lineage=lin, command=m.get("command"), card=str(v.card_path), files=len(m["files"]),
                   verified=not no_verify)
        print_json(dict(sorted(doc.items())))
        return
    # Plain echo, not rich: rich would break a long path at the console width, and paths get copied.
    out = typer.echo
    out(f"{v.ref}  sha:{v.sha[:16]}  kind={m['kind']}")
    for s, info in m["splits"].items():
        out(f"  {s}: {info['rows']} rows")
    if dup_ids or dup_rows:
        out(f"  duplicates: {dup_ids} ids, {dup_rows} rows")
    out(f"  parents: {', '.join(parents) or '(none)'}")
    for k in ("engine", "model", "templates", "seeds"):
        if lin.get(k):
            out(f"  {k}: {json.dumps(lin[k]) if isinstance(lin[k], dict) else lin[k]}")
    if m.get("command"):
        out(f"  command: {m['command']}")
    out(f"  path: {v.path}")
    out(f"  card: {v.card_path}")
    out("  checksums: not verified (--no-verify)" if no_verify
        else f"  checksums: verified ({len(m['files'])} files, row counts match)")


@app.command("log")
def log_cmd(ref: str = _REF, no_verify: bool = _NO_VERIFY, as_json: bool = _JSON):
    """Ancestry down to the prompt sets, each version's checksums verified."""
    from prefdata.errors import PrefdataError
    from prefdata.store import Corrupt, CorruptVersion, log, verify
    from prefdata.tables import print_json

    bad, nodes = [], []
    if not Path(ref).exists() and not ref.startswith("builtin:"):
        from prefdata.store import resolve

        resolve(ref)  # an unknown ref is an error here, not an "external" parent
    for depth, node in log(ref):
        if isinstance(node, str):  # a file path or a built-in prompt set, outside the store
            nodes.append({"depth": depth, "ref": node, "type": "external", "status": None, "content_hash": None,
                          "uses": None, "created": None})
            continue
        if isinstance(node, Corrupt):
            bad.append(node.ref)
            nodes.append({"depth": depth, "ref": node.ref, "type": "version", "status": "corrupt",
                          "reason": node.reason, "content_hash": None, "uses": None, "created": None})
            continue
        status, reason = "not verified", None
        if not no_verify:
            try:
                verify(node)
                status = "verified"
            except CorruptVersion as e:
                bad.append(node.ref)
                status, reason = "corrupt", e.reason
        step = (node.manifest.get("lineage") or {}).get("step") or {}
        uses = step.get("uses", "") if isinstance(step, dict) else ""
        nodes.append({"depth": depth, "ref": node.ref, "type": "version", "status": status, "reason": reason,
                      "content_hash": node.sha, "uses": uses, "created": node.manifest["created"]})
    for n in nodes:
        n.setdefault("reason", None)
    if as_json:
        # The document is printed even when an ancestor is corrupt (status says which); the exit
        # code still says so, as in the text form.
        print_json({"schema": SCHEMA.format("log"), "ref": ref, "nodes": nodes})
    else:
        for n in nodes:
            pad = "  " * n["depth"]
            if n["type"] == "external":
                typer.echo(f"{pad}└ {n['ref']}")
            elif n["content_hash"] is None:
                typer.echo(f"{pad}└ {n['ref']} CORRUPT: {n['reason']}")
            else:
                status = f"CORRUPT: {n['reason']}" if n["status"] == "corrupt" else n["status"]
                typer.echo(f"{pad}└ {n['ref']} sha:{n['content_hash'][:12]} {n['uses']} {n['created']} [{status}]")
    if bad:
        raise PrefdataError(f"corrupt in the ancestry of {ref}: {', '.join(dict.fromkeys(bad))}")


@app.command("verify")
def verify_cmd(ref: str = typer.Argument(None, help="A version ref, or with --all a dataset name.",
                                        autocompletion=complete_ref),
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


_DIFF_LISTS = ("columns_added", "columns_removed", "columns_retyped", "columns_changed_on_shared_rows",
               "lineage_changed")


@app.command("diff")
def diff_cmd(a: str = _REF, b: str = _REF, split: str = "train", as_json: bool = _JSON):
    """Rows added/removed (by id), schema and lineage differences."""
    from prefdata.store import diff
    from prefdata.tables import print_json

    d = diff(a, b, split)
    if as_json:
        print_json({"schema": SCHEMA.format("diff"), "a": d["a"], "b": d["b"], "split": split,
                    "rows": {"a": d["rows"][d["a"]], "b": d["rows"][d["b"]]},
                    "added_ids": sorted(d["added_ids"]), "removed_ids": sorted(d["removed_ids"]),
                    **{k: list(d[k]) for k in _DIFF_LISTS}})
        return
    typer.echo(f"{d['a']} → {d['b']}: rows {d['rows'][d['a']]} → {d['rows'][d['b']]}")
    typer.echo(f"  added: {len(d['added_ids'])}  removed: {len(d['removed_ids'])}")
    for k in _DIFF_LISTS:
        if d[k]:
            typer.echo(f"  {k.replace('_', ' ')}: {', '.join(d[k])}")


def _last(messages) -> str:
    if isinstance(messages, list) and messages:
        m = messages[-1]
        return str(m.get("content", "")) if isinstance(m, dict) else str(m)
    return "" if messages is None else str(messages)


@app.command("head")
def head_cmd(ref: str = _REF,
             n: int = typer.Option(5, "-n", "--rows", min=1, help="How many rows to show."),
             where: str = typer.Option(None, "--where", help="A SQL condition on the version's columns, e.g. "
                                       "\"label_prob < 0.3\" or \"flipped\" (polars SQL)."),
             split: str = "train",
             width: int = typer.Option(400, "--width", min=20, help="Characters of each text shown on a terminal."),
             as_json: bool = typer.Option(False, "--json", help="JSONL, one row per line, whatever the output.")):
    """The first rows of a version, readable: panels on a terminal, JSONL when piped or with --json."""
    import sys

    import polars as pl

    from prefdata.errors import ConfigError
    from prefdata.store import load_table

    df = pl.from_arrow(load_table(ref, split))
    if where:
        try:
            df = pl.SQLContext(t=df).execute(f"SELECT * FROM t WHERE {where}", eager=True)
        except Exception as e:  # noqa: BLE001 - the user's expression
            raise ConfigError(f"--where {where!r}: {' '.join(str(e).split())[:200]}") from None
    total = df.height
    df = df.head(n)
    if as_json or not sys.stdout.isatty():
        for row in df.iter_rows(named=True):
            typer.echo(json.dumps(row, ensure_ascii=False, default=str))
        return
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    con = Console()
    clip = lambda t: t if len(t) <= width else t[: width - 1] + "…"  # noqa: E731
    shown = ("prompt", "chosen", "rejected", "completion", "id")
    for i, row in enumerate(df.iter_rows(named=True), 1):
        body = Text()
        for col in ("prompt", "chosen", "rejected", "completion"):
            if col in row:
                body.append(f"{col}: ", style="bold")
                body.append(clip(_last(row[col])) + "\n")
        extras = {k: v for k, v in row.items()
                  if k not in shown and v not in (None, "", "{}") and not isinstance(v, (list, dict))}
        if extras:
            body.append(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extras.items()),
                        style="dim")
        con.print(Panel(body, title=f"{i}. {row.get('id', '')}", title_align="left"))
    con.print(f"{df.height} of {total} row(s){' matching ' + repr(where) if where else ''} in {ref}")


@app.command("export")
def export_cmd(ref: str = _REF,
               format: str = typer.Option("conversational", "--format",
                                          help="standard | conversational (TRL), jsonl | parquet (full schema)"),
               out: Path = typer.Option(..., "--out", help="Output file (.jsonl or .parquet)."),
               split: str = "train",
               drop_ties: bool = typer.Option(False, "--drop-ties",
                                              help="Leave out ties (label_prob 0.5, or null): TRL reads every "
                                                   "pair as chosen better than rejected."),
               min_label_prob: float = typer.Option(None, "--min-label-prob",
                                                    help="Leave out pairs whose label_prob is below this "
                                                         "(e.g. 0.7 keeps the surer labels).")):
    """Export a version to TRL's formats or our full schema."""
    from prefdata.store.ops import TRL_FORMATS, export_counted

    path, c = export_counted(ref, out, format, split, drop_ties=drop_ties, min_label_prob=min_label_prob)
    left = c.get("ties_dropped", 0) + c.get("below_min", 0)
    typer.echo(f"wrote {path}" + (f" ({c['kept']} of {c['rows']} pairs: {c['ties_dropped']} ties and "
                                  f"{c['below_min']} below --min-label-prob left out)" if left else ""))
    if format not in TRL_FORMATS or not c:
        return
    # TRL's trainers take prompt/chosen/rejected only: say what that does to these pairs.
    if c["ties_kept"]:
        _warn(f"{c['ties_kept']} tied pair(s) (label_prob 0.5, a human or vote tie) are written as chosen better "
              "than rejected, and TRL trains on them as hard preferences; --drop-ties leaves them out")
    if c["soft"] or c["margins"]:
        below = f", {c['below_half']} of them below 0.5" if c["below_half"] else ""
        _warn(f"label_prob and margin are not in TRL's {format} format and are left out ({c['soft']} pair(s) "
              f"with a label_prob other than 1{below}; {c['margins']} with a non-zero margin); --min-label-prob P "
              "keeps only the surer pairs; `prefdata train` and --format jsonl|parquet keep both columns")
    typer.echo("hint: TRL's RewardTrainer drops, without a word, every pair whose prompt + answer is longer "
               "than its max_length (1024 tokens by default); DPOTrainer truncates them instead. Check the "
               "lengths against your max_length before training.", err=True)


@app.command("import")
def import_cmd(source: str = typer.Argument(..., help="File, HF datasets folder or store ref."),
               name: str = typer.Option(..., "--name", help="Store dataset name to commit under."),
               kind: str = typer.Option(None, help="pair | prompt | completion | unpaired (inferred if absent)"),
               on_error: str = typer.Option("raise", "--on-error", help="raise | quarantine"),
               dedup: bool = typer.Option(False, "--dedup", help="Drop rows repeating an earlier id or content."),
               allow_empty: str = typer.Option("none", "--allow-empty",
                                               help="Keep pairs with an empty answer on this side: "
                                                    "none | chosen | rejected | both."),
               layout: str = typer.Option(None, "--layout", help="Read a multi-annotator layout: pandalm (see "
                                          "prefdata/annotators.py): annotators become vote columns."),
               force_kind: bool = typer.Option(False, "--force-kind",
                                               help="Commit even when the kind differs from NAME@latest's "
                                                    "(e.g. prompts under a pair dataset's name).")):
    """Validate a file and commit it as a new version (HH transcripts and TRL formats accepted)."""
    from prefdata import io
    from prefdata.store import check_name, commit, quarantine_path
    from prefdata.store import dedup as drop_duplicates

    # The name is checked before the input is even opened: it becomes part of paths.
    check_name(name)
    quarantine = quarantine_path(name) if on_error == "quarantine" else None
    if layout is not None:
        from prefdata.annotators import LAYOUTS, pandalm
        from prefdata.errors import ConfigError
        from prefdata.schema import validate

        if layout not in LAYOUTS:
            raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        raw, info = pandalm(source)
        typer.echo(f"{layout}: {info['pairs']} pairs, {info['annotators']} annotators; {info['ties_left_out']} rows "
                   "whose majority was a tie left out", err=True)
        sides = io.allow_empty_sides(allow_empty)
        table = validate(raw.to_pylist(), "pair", source=source, on_error=on_error, quarantine_path=quarantine,
                         normalise=lambda row, k: io.normalise_row(row, k, sides), empty_ok=sides)
    else:
        table = io.read(source, kind, on_error=on_error, quarantine_path=quarantine, allow_empty=allow_empty)
    kind = kind or io.infer_kind(table.column_names)
    step = {"uses": "import", "source": source, **({"allow_empty": allow_empty} if allow_empty != "none" else {})}
    if dedup:
        table, dropped = drop_duplicates(table)
        step["dedup_dropped"] = dropped
        typer.echo(f"dropped {dropped} duplicate rows", err=True)
    parent = source if "@" in source and not Path(source).exists() else str(Path(source).resolve())
    v = commit(name, table, kind=kind, lineage={"parents": [parent], "step": step}, allow_kind_change=force_kind,
               command=f"prefdata datasets import {source} --name {name}" + (" --dedup" if dedup else "")
               + (f" --allow-empty {allow_empty}" if allow_empty != "none" else "")
               + (f" --layout {layout}" if layout else "") + (" --force-kind" if force_kind else ""))
    typer.echo(f"{v.ref}  card: {v.card_path}")
