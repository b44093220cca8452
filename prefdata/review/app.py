"""The review server: a Starlette app over one store version and one annotator's queue.

Security, for a server that shows private data on a shared machine:
- a random token printed at start is required on every request: `?token=` once, which sets an
  HttpOnly, SameSite=Strict cookie and redirects to a URL without it (so it leaves the address bar);
  no token is 401, a wrong one 403;
- every POST carries the CSRF token from the page (header X-CSRF-Token), as JSON, and a foreign
  Origin is refused, so another site open in the same browser cannot decide for you; a body over
  MAX_BODY (1 MiB) is refused with 413 before it is read whole;
- all dataset text is escaped (pages.esc) and a nonce CSP blocks any script that slipped through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from urllib.parse import urlencode

import pyarrow as pa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from prefdata.review import pages
from prefdata.review.db import ReviewDB, db_path
from prefdata.review.rank import priority

# key -> decision when answer 1 is the stored chosen; when the sides are swapped, 1 and 2 trade.
KEYS = {"1": "keep", "2": "flip", "t": "tie", "d": "drop", "s": "skip"}
# A decision is {"pair_id", "key"}: bytes. Larger bodies are refused (413) without being read whole.
MAX_BODY = 1 << 20


def is_swapped(annotator: str, pair_id: str) -> bool:
    """Whether answer 1 on screen is the stored *rejected* one. Fixed per (annotator, pair), so a
    reload shows the same layout, and random across pairs, so 'always press 1' is not 'keep'."""
    return hashlib.sha256(f"{annotator}\0{pair_id}".encode()).digest()[0] & 1 == 1


def decision_for(key: str, swapped: bool) -> str:
    d = KEYS[key]
    if swapped and d in ("keep", "flip"):
        return "flip" if d == "keep" else "keep"
    return d


def family_names(version, n: int) -> list[str]:
    """Names for the `votes` entries: the posterior's families from the lineage when they line up."""
    fams = list(((version.manifest.get("lineage") or {}).get("posterior") or {}).get("families") or {})
    return fams if len(fams) == n else [f"family {i + 1}" for i in range(n)]


class ReviewState:
    """What the handlers share: the data, the queue settings, the decisions file, the secrets."""

    def __init__(self, version, table: pa.Table, annotator: str, *, budget: int | None, overlap: int,
                 token: str | None = None, db: ReviewDB | None = None):
        self.version, self.table, self.annotator = version, table, annotator
        self.budget, self.overlap = budget, max(1, int(overlap))
        self.token = token or secrets.token_urlsafe(24)
        self.csrf = hmac.new(self.token.encode(), b"csrf", hashlib.sha256).hexdigest()
        # One cookie per server: two annotators' servers on one host (other ports) must not clobber each other.
        self.cookie = "prefdata_review_" + hashlib.sha256(self.token.encode()).hexdigest()[:10]
        self.db = db or ReviewDB(db_path(version))
        self.db.init_pairs(priority(table))
        self.db.set_meta(ref=version.ref, sha=version.sha)
        ids = table.column("id").to_pylist()
        self.row_of = {}
        for i, pid in enumerate(ids):
            self.row_of.setdefault(str(pid), i)

    def row(self, pair_id: str) -> dict:
        return self.table.slice(self.row_of[pair_id], 1).to_pylist()[0]

    def votes(self, row: dict) -> list[tuple[str, float]]:
        v = [x for x in (row.get("votes") or []) if x is not None]
        return list(zip(family_names(self.version, len(v)), v))


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None once it is over MAX_BODY: refused by its Content-Length before any
    of it is read, or as soon as that many bytes have come (chunked), so a huge body costs at most
    MAX_BODY of memory."""
    length = request.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) > MAX_BODY):
        return None
    parts, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _ok(given: str | None, want: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), want.encode())


class TokenGate:
    """ASGI middleware: nothing but the token (in the query once, then the cookie) gets through."""

    def __init__(self, app, state: ReviewState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        req = Request(scope)
        st = self.state
        given = req.query_params.get("token")
        if given is not None:
            if not _ok(given, st.token):
                return await _plain("wrong access token", 403)(scope, receive, send)
            rest = [(k, v) for k, v in req.query_params.multi_items() if k != "token"]
            resp = RedirectResponse(req.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
            resp.set_cookie(st.cookie, st.token, httponly=True, samesite="strict", path="/")
            return await _secure(resp)(scope, receive, send)
        cookie = req.cookies.get(st.cookie)
        if cookie is None:
            return await _plain("access token required: open the URL printed by `prefdata review`", 401)(
                scope, receive, send)
        if not _ok(cookie, st.token):
            return await _plain("wrong access token", 403)(scope, receive, send)
        await self.app(scope, receive, send)


def _secure(resp: Response, nonce: str | None = None) -> Response:
    src = f"'nonce-{nonce}'" if nonce else "'none'"
    resp.headers["Content-Security-Policy"] = (f"default-src 'none'; script-src {src}; style-src {src}; "
                                               "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                               "frame-ancestors 'none'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _plain(text: str, status: int) -> Response:
    return _secure(PlainTextResponse(text, status_code=status))


def create_app(state: ReviewState) -> Starlette:
    async def index(request: Request) -> Response:
        st, nonce = state, secrets.token_urlsafe(16)
        wanted = request.query_params.get("pair")
        if wanted is not None and not st.db.has_pair(wanted):
            return _plain("no such pair in this review", 404)
        # Looked up and claimed in one transaction: two annotators' servers never both take a pair
        # that has room for one more.
        pid = wanted or await run_in_threadpool(st.db.claim_next, st.annotator, st.budget, st.overlap)
        mine = {d["pair_id"]: d["decision"] for d in st.db.live(st.annotator)}
        common = {"ref": st.version.ref, "annotator": st.annotator, "done": len(mine),
                  "total": st.db.offered(st.budget), "recent": st.db.recent(st.annotator), "nonce": nonce,
                  "csrf": st.csrf}
        if pid is None:
            return _secure(HTMLResponse(pages.done_page(**common)), nonce)
        row = st.row(pid)
        swapped = is_swapped(st.annotator, pid)
        html = pages.pair_page(**common, row=row, swapped=swapped, votes=st.votes(row), current=mine.get(pid))
        return _secure(HTMLResponse(html), nonce)

    async def _json_post(request: Request):
        """The body of a genuine POST from our page, or the refusal to send."""
        if not _ok(request.headers.get("x-csrf-token"), state.csrf):
            return None, _plain("CSRF token missing or wrong", 403)
        origin = request.headers.get("origin")
        if origin not in (None, "null") and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
            return None, _plain("cross-origin request refused", 403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return None, _plain("expected application/json", 415)
        raw = await _read_body(request)
        if raw is None:
            return None, _plain(f"request body over {MAX_BODY // 1024} KiB", 413)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None, _plain("body is not JSON", 400)
        return (body, None) if isinstance(body, dict) else (None, _plain("body must be a JSON object", 400))

    async def decide(request: Request) -> Response:
        body, refusal = await _json_post(request)
        if refusal:
            return refusal
        pid, key = body.get("pair_id"), body.get("key")
        if not isinstance(pid, str) or not state.db.has_pair(pid):
            return _plain("unknown pair", 404)
        if key not in KEYS:
            return _plain(f"unknown key (expected one of {', '.join(KEYS)})", 400)
        swapped = is_swapped(state.annotator, pid)
        seq = await run_in_threadpool(state.db.decide, pid, state.annotator, decision_for(key, swapped),
                                      key=key, swapped=swapped)
        return _secure(JSONResponse({"saved": seq, "next": "/"}))

    async def undo(request: Request) -> Response:
        _, refusal = await _json_post(request)
        if refusal:
            return refusal
        pid = await run_in_threadpool(state.db.undo, state.annotator)
        return _secure(JSONResponse({"undone": pid, "next": f"/?{urlencode({'pair': pid})}" if pid else "/"}))

    app = Starlette(routes=[Route("/", index), Route("/decide", decide, methods=["POST"]),
                            Route("/undo", undo, methods=["POST"])])
    app.add_middleware(TokenGate, state=state)
    app.state.review = state
    return app
