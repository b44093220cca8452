"""`prefdata review REF` (serve the review page), `prefdata review commit REF` (apply it), and
`prefdata review export|import REF` (the queue out to Argilla / Label Studio, their answers back).

One command with optional further arguments, since a Typer group cannot also take a REF of its
own: `review commit X` commits the review of X, `review export X`, `review import X FILE`; anything
else is the ref to review.
"""

from __future__ import annotations

import getpass
import ipaddress
import socket
import sys

import typer

from prefdata.errors import PrefdataError
from prefdata.review.db import ANNOTATOR_RE, check_annotator


def _default_annotator() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return name if ANNOTATOR_RE.match(name or "") else "annotator"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(ref: str, *, host: str, port: int, annotator: str, budget: int | None, overlap: int,
          token: str | None = None) -> None:
    import uvicorn

    from prefdata.review.app import ReviewState, create_app
    from prefdata.store import load_table, resolve

    check_annotator(annotator)
    if budget is not None and budget < 1:
        raise PrefdataError("--budget must be at least 1")
    if overlap < 1:
        raise PrefdataError("--overlap must be at least 1")
    version = resolve(ref)
    if version.manifest.get("kind") != "pair":
        raise PrefdataError(f"{version.ref} is a '{version.manifest.get('kind')}' dataset; review needs pairs")
    state = ReviewState(version, load_table(str(version.path)), annotator, budget=budget, overlap=overlap, token=token)
    from prefdata import interrupts

    # Set before the URL is printed: a Ctrl-C the moment the server is up must already read this way.
    stopped = (f"review server stopped; every decision so far is saved in {state.db.path}: `prefdata review "
               f"{version.ref}` continues, `prefdata review commit {version.ref}` commits them")
    interrupts.set_message(stopped)
    # Bound here, not by uvicorn, so --port 0 works and the printed URL carries the real port.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PrefdataError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
    # Listening before the URL is printed: a browser (or a test) that connects at once is queued in
    # the backlog until uvicorn accepts, instead of refused while the app is still starting.
    sock.listen(128)
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(host):
        print(f"warning: listening on {host}, reachable from other machines; the token is the only guard "
              "and the connection is not encrypted", file=sys.stderr)
    offered = state.db.offered(budget)
    print(f"reviewing {version.ref} as {annotator}: {offered} pairs offered, overlap {state.overlap}; "
          f"decisions in {state.db.path}", flush=True)
    print(f"open: http://{shown}:{real_port}/?token={state.token}", flush=True)
    print("keys: 1/2 choose, t tie, d drop, s skip, u undo; Ctrl-C stops (nothing is lost); then "
          f"`prefdata review commit {version.ref}`", flush=True)
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    print(stopped, file=sys.stderr)


def register(app: typer.Typer) -> None:
    @app.command("review")
    def review_cmd(target: str = typer.Argument(..., metavar="REF | commit | export | import",
                                                help="Dataset ref to review, or a verb followed by the ref."),
                   ref: str = typer.Argument(None, metavar="[REF]", help="With a verb: the reviewed ref."),
                   file: str = typer.Argument(None, metavar="[FILE]", help="With `import`: the tool's export "
                                              "(Argilla: the to_disk directory or its records.json)."),
                   port: int = typer.Option(8765, help="Port to listen on (0: any free one)."),
                   host: str = typer.Option("127.0.0.1", help="Address to bind; other than loopback is exposed."),
                   annotator: str = typer.Option(None, help="Your name; each annotator has a queue (default: $USER). "
                                                 "With `import`: the name the file's answers are filed under."),
                   budget: int = typer.Option(None, help="Offer (or export) at most this many pairs, the most "
                                              "uncertain."),
                   overlap: int = typer.Option(1, help="Annotators per pair; 2 or more measures agreement."),
                   fmt: str = typer.Option(None, "--format", help="With export/import: argilla | labelstudio."),
                   out: str = typer.Option(None, "--out", help="With `export`: the Argilla directory or the "
                                           "Label Studio task file to write."),
                   name: str = typer.Option(None, help="With `commit`: dataset name of the new version "
                                                       "(default: the reviewed one's)."),
                   human_accuracy: float = typer.Option(0.8, help="With `commit`: assumed accuracy of one human "
                                                                  "label, for label_prob.")):
        """Review the least certain pairs in the browser (every key saved at once), or commit the
        decisions as a new version: `prefdata review REF`, then `prefdata review commit REF`.
        Elsewhere: `prefdata review export REF --format argilla --out DIR`, then
        `prefdata review import REF DIR --format argilla --annotator NAME`, then commit."""
        verbs = ("commit", "export", "import")
        if target in verbs and ref is None:
            raise PrefdataError(f"`prefdata review {target}` needs the dataset ref: prefdata review {target} REF")
        if target in ("export", "import") and fmt is None:
            raise PrefdataError(f"`prefdata review {target}` needs --format argilla or --format labelstudio")
        if target == "export":
            from prefdata.review.interchange import export_queue

            if out is None:
                raise PrefdataError("`prefdata review export` needs --out (a directory for argilla, a .json for "
                                    "labelstudio)")
            r = export_queue(ref, fmt, out, budget=budget)
            typer.echo(f"{r['ref']}: {r['pairs']} pairs, least certain first, written for {fmt}: "
                       + ", ".join(r["files"]))
            return
        if target == "import":
            from prefdata.review.interchange import import_decisions

            if file is None:
                raise PrefdataError("`prefdata review import REF FILE` needs the file exported from the tool")
            if annotator is None:
                raise PrefdataError("`prefdata review import` needs --annotator NAME (who gave these answers)")
            r = import_decisions(ref, fmt, file, annotator=annotator)
            by = ", ".join(f"{k} {v}" for k, v in r["by_decision"].items()) or "none"
            left = (f"; {r['not_submitted']} not submitted (drafts, or answers on a pending record) left out"
                    if r.get("not_submitted") else "")
            typer.echo(f"{r['ref']}: {r['answers']} answers from {r['file']} ({by}){left}; {r['written']} new "
                       f"decisions, {r['unchanged']} already recorded; annotators: {', '.join(r['annotators']) or '-'}. "
                       f"Next: prefdata review commit {r['ref']}")
            return
        if file is not None:
            raise PrefdataError(f"unexpected argument '{file}'")
        if target == "commit":
            from prefdata.review.commit import commit_review

            version, decisions, s = commit_review(ref, name=name, human_accuracy=human_accuracy,
                                                  command=f"prefdata review commit {ref}" + (f" --name {name}" if name else ""))
            aa, vv = s["annotator_agreement"], s["vote_vs_humans"]
            typer.echo(f"{version.ref}: {s['reviewed_pairs']} pairs reviewed, {s['labels_changed']} labels changed, "
                       f"{s['ties']} ties, {s['dropped']} dropped; decisions {decisions.ref}")
            if aa["kappa"] is not None:
                typer.echo(f"annotator agreement: {aa['method']} {aa['kappa']:.3f} on {aa['pairs']} pairs")
            if vv["pairs"]:
                typer.echo(f"automatic vote agreed with humans on {vv['agreement']:.1%} of {vv['pairs']} pairs")
            return
        if ref is not None:
            raise PrefdataError(f"unexpected argument '{ref}' (did you mean `prefdata review commit {ref}`?)")
        serve(target, host=host, port=port, annotator=annotator or _default_annotator(), budget=budget,
              overlap=overlap)
