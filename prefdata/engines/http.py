"""A lean HTTP/1.1 client for one job: POSTing JSON chat completions, hundreds in flight.

Why it exists: the OpenAI engine runs every request on one event loop, so the client's CPU per
request caps throughput at 1 / (CPU per request). The official client's stack (openai's request
layer, httpx, httpcore, anyio, h11) costs 1-2 ms per request, which at 256 in flight against a
200 ms server needs more than the one core an event loop has (benchmarks/RESULTS.md, "Engines:
OpenAI-compatible client efficiency"). This client is asyncio streams and a few lines of parsing.

What it does: a keep-alive pool (at most `max_connections` open, the most recently used reused
first so a server's idle timeout closes the cold ones; a connection the server has closed is
dropped before reuse, checked with a zero-timeout poll of its socket), Content-Length, chunked and read-to-close replies, gzip replies, TLS with
`ssl.create_default_context()` (system CA store; OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR), and
one deadline of `timeout` seconds per request covering connect, send and the whole reply (the
official client applies its timeout to connect, write and each read; for a non-streamed chat
completion, where the server sends nothing until the answer is done, the two agree).

What it does not do, on purpose: proxies (`proxy_in_env` lets the engine fall back to the official
client when one applies), HTTP/2, redirects (a 3xx with a Location is `RedirectRefused`, one line
naming where it pointed; the official client follows one only within the base URL's origin),
streaming, 1xx replies, credentials or a query string in the base URL (`Unsupported`: the engine's
auto choice then falls back to the official client).

A reply body over `max_body` bytes (engine.max_response_mb, 32 MiB by default), as sent or once
gunzipped, is `ResponseTooLarge`: refused as soon as its Content-Length says so, or once that many
bytes have come, so a runaway server costs at most that much memory.

Errors carry the official client's class names and messages ("Error code: 500 - boom",
"Connection error.", "Request timed out."), so a run reads the same whichever client made it; a
reply that is not valid HTTP/1.1 is a `ProtocolError` whose one line names the server and the
fault. All are PrefdataErrors with one-line messages, and none contains the API key.
"""

from __future__ import annotations

import asyncio
import collections
import json
import select
import ssl
import urllib.parse
import urllib.request
import zlib

from prefdata.errors import PrefdataError
from prefdata.redact import redact

MAX_HEAD = 64 * 1024  # status line plus headers; also the StreamReader's line limit
MAX_BODY = 32 * 1024 * 1024  # the default limit: a chat completion is kilobytes; this stops a runaway server
REDIRECTS = (301, 302, 303, 307, 308)


class APIError(PrefdataError):
    """Base of the lean client's errors; the message is one line."""


class APIConnectionError(APIError):
    def __init__(self, message: str = "Connection error."):
        super().__init__(message)


class APITimeoutError(APIConnectionError):
    def __init__(self):
        super().__init__("Request timed out.")


class ProtocolError(APIConnectionError):
    """The server's reply is not HTTP/1.1 we can read. Retried like a dropped connection (the
    official client raises httpx's RemoteProtocolError, which openai turns into a connection error)."""


class ResponseTooLarge(APIError):
    """A reply body over the limit. Not retried: the same request would get the same reply."""


class RedirectRefused(APIError):
    """A redirect this client will not follow (the lean client follows none; the official client
    none to another origin, which would receive the prompts and the key's bearer header)."""


def too_large(shown: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"the reply from {shown} is over {_size(limit)}, the limit set by "
                            "engine.max_response_mb; raise it if such replies are expected")


def redirect_refused(shown: str, status: int, target: str, same_origin: bool) -> RedirectRefused:
    """`target`: the redirect's absolute URL; only its scheme://host:port is shown (a query string
    may carry a token)."""
    u = urllib.parse.urlsplit(target)
    where = f"{u.scheme}://{u.netloc.rpartition('@')[2]}" if u.scheme and u.netloc else "?"
    if same_origin:
        return RedirectRefused(f"{shown} answered {status}, a redirect to {where}{u.path[:80]}; the lean HTTP "
                               "client follows no redirects: set engine.base_url to where the server lives")
    return RedirectRefused(f"{shown} answered {status}, a redirect to another origin ({where}); refused, so "
                           "prompts and the API key only ever go to engine.base_url's origin")


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


class APIStatusError(APIError):
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.body = status, headers, body
        super().__init__(_status_message(status, body))


class BadRequestError(APIStatusError): ...
class AuthenticationError(APIStatusError): ...
class PermissionDeniedError(APIStatusError): ...
class NotFoundError(APIStatusError): ...
class ConflictError(APIStatusError): ...
class UnprocessableEntityError(APIStatusError): ...
class RateLimitError(APIStatusError): ...
class InternalServerError(APIStatusError): ...


# The same status-to-class table as openai's client (`_make_status_error`).
_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
              409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError}


def status_error(status: int, headers: dict[str, str], body: bytes) -> APIStatusError:
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(status, headers, body)


def _status_message(status: int, body: bytes) -> str:
    return status_message(status, body)


def server_message(body: bytes | str | None, limit: int = 300) -> str | None:
    """What the server said in an error body, on one line, or None. OpenAI's `error.message` (or a
    top-level `message`), as openai's client shows it; and what other servers send: `error` as a
    string, FastAPI's `detail` (a string, or a list of {loc, msg}: `transformers serve`, pydantic),
    or a short plain-text body (not an HTML page)."""
    if body is None:
        return None
    raw = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    text = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            text = error.get("message")
            if not (isinstance(text, str) and text) and isinstance(error.get("detail"), (str, list)):
                text = _detail(error["detail"])
        elif isinstance(error, str):
            text = error
    elif data is None and raw.strip() and not raw.lstrip().startswith("<"):
        text = raw
    if not isinstance(text, str) or not text.strip():
        return None
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _detail(detail) -> str | None:
    if isinstance(detail, str):
        return detail
    parts = []
    for d in detail[:5]:
        if isinstance(d, dict) and isinstance(d.get("msg"), str):
            loc = ".".join(str(x) for x in d.get("loc") or [] if x != "body")
            parts.append(f"{loc}: {d['msg']}" if loc else d["msg"])
    return "; ".join(parts) or None


def status_message(status: int, body: bytes | str | None) -> str:
    """openai's wording: "Error code: N", plus " - <what the server said>" (server_message)."""
    text = server_message(body)
    return f"Error code: {status}" + (f" - {text}" if text else "")


class Unsupported(PrefdataError):
    """A base URL the official client can use and this one cannot (credentials, a query string)."""


class _Malformed(Exception):
    """Raised while parsing; `post` turns it into a ProtocolError naming the server."""


class _TooLarge(Exception):
    """Raised while reading a body over the limit; `post` turns it into ResponseTooLarge."""


class Origin:
    """scheme://host:port plus the path prefix of a base URL, checked once."""

    def __init__(self, base_url: str):
        shown = redact(base_url)
        try:
            u = urllib.parse.urlsplit(base_url)
            port = u.port
        except ValueError as err:
            raise PrefdataError(f"engine.base_url {shown}: {err}") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise PrefdataError(f"engine.base_url {shown}: the lean HTTP client needs an http:// or https:// URL "
                                "with a host")
        if u.username or u.password:
            raise Unsupported(f"engine.base_url {shown}: the lean HTTP client does not send credentials from "
                              "the URL; put the key in the variable named by engine.api_key_env")
        if u.query or u.fragment:
            raise Unsupported(f"engine.base_url {shown}: the lean HTTP client takes no query string or fragment "
                              "in the base URL; use engine.http_client: openai")
        self.scheme, self.host = u.scheme, u.hostname
        self.port = port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.netloc = host if port is None else f"{host}:{port}"
        self.shown = f"{self.scheme}://{self.netloc}"  # for messages: no path, query or credentials


def proxy_in_env(origin: Origin) -> str | None:
    """Which proxy variable would apply to this origin (httpx reads the same ones), or None."""
    proxies = urllib.request.getproxies_environment()
    for scheme in (origin.scheme, "all"):
        if proxies.get(scheme) and not urllib.request.proxy_bypass_environment(origin.host, proxies):
            return f"{scheme.upper()}_PROXY"
    return None


class LeanClient:
    """POST JSON to one origin over a keep-alive pool; `post` returns the body of a 2xx reply."""

    def __init__(self, origin: Origin, api_key: str, timeout: float, max_connections: int,
                 max_body: int = MAX_BODY):
        self.origin, self.timeout, self.max_body = origin, timeout, max_body
        if any(c in api_key for c in "\r\n") or not api_key.isascii():
            # Never echo it: this is the key.
            raise PrefdataError("the API key has characters an HTTP header cannot carry")
        # Every request's headers but Content-Length, built once. No Accept-Encoding but gzip, which
        # we can decode; the official client also offers gzip and deflate.
        self._fixed = (f"Host: {origin.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
                       "Content-Type: application/json\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\n"
                       "User-Agent: prefdata-lean-http\r\n").encode("ascii")
        self._ssl = ssl.create_default_context() if origin.scheme == "https" else None
        self._idle: collections.deque = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)  # an open connection per slot at most

    def __repr__(self) -> str:  # the headers hold the key
        return f"LeanClient({self.origin.shown})"

    async def post(self, path: str, payload: bytes) -> bytes:
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(path, payload)
            except TimeoutError:  # before OSError: TimeoutError is one
                raise APITimeoutError() from None
            except _TooLarge:
                raise too_large(self.origin.shown, self.max_body) from None
            except _Malformed as err:
                raise ProtocolError(f"Connection error: {self.origin.shown} sent a malformed HTTP reply ({err})") \
                    from None
            except asyncio.LimitOverrunError:
                raise ProtocolError(f"Connection error: {self.origin.shown} sent a malformed HTTP reply (headers "
                                    f"over {MAX_HEAD // 1024} KiB)") from None
            except ssl.SSLCertVerificationError as err:
                raise APIConnectionError(f"Connection error: TLS certificate of {self.origin.shown} not "
                                         f"trusted ({err.verify_message})") from None
            except ssl.SSLError as err:
                raise APIConnectionError(f"Connection error: TLS with {self.origin.shown} failed "
                                         f"({err.reason or err})") from None
            except (OSError, EOFError, asyncio.IncompleteReadError):
                # refused, reset, DNS, or closed before a whole reply: the official client's wording
                raise APIConnectionError() from None

    async def _exchange(self, path: str, payload: bytes) -> bytes:
        conn = self._take_idle()
        if conn is None:
            conn = await asyncio.open_connection(self.origin.host, self.origin.port, ssl=self._ssl, limit=MAX_HEAD,
                                                 server_hostname=self.origin.host if self._ssl else None)
        reader, writer = conn
        reusable = False
        try:
            writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                         % ((self.origin.prefix + path).encode(), self._fixed, len(payload), payload))
            await writer.drain()
            status, headers, body, reusable = await _read_reply(reader, self.max_body)
        finally:
            # Any error or cancellation leaves the connection mid-exchange: never reuse it.
            if reusable:
                self._idle.append(conn)
            else:
                writer.close()
        if 200 <= status < 300:
            return body
        if status in REDIRECTS and headers.get("location"):
            url = f"{self.origin.scheme}://{self.origin.netloc}{self.origin.prefix}{path}"
            target = urllib.parse.urljoin(url, headers["location"])
            try:
                same = Origin(target).shown == self.origin.shown
            except PrefdataError:  # not even http(s)
                same = False
            raise redirect_refused(self.origin.shown, status, target, same)
        raise status_error(status, headers, body)

    def _take_idle(self):
        while self._idle:
            reader, writer = conn = self._idle.pop()  # most recently used first
            if reader.at_eof() or writer.is_closing() or _readable(writer.get_extra_info("socket")):
                writer.close()  # the server closed it (or sent something unasked) while it sat idle
                continue
            return conn
        return None

    async def close(self) -> None:
        writers = [w for _, w in self._idle]
        self._idle.clear()
        for w in writers:
            w.close()
        # The sockets close on the loop's next turns; the engine closes its loop right after this.
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


async def _read_reply(reader: asyncio.StreamReader, max_body: int = MAX_BODY) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers with lower-case names, body, whether the connection can be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise _Malformed(f"status line {_show(lines[0])}")
    status = int(parts[1])
    if status < 200:
        raise _Malformed(f"interim status {status}, which this client never asks for")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _Malformed(f"header line {_show(line)}")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    keep = parts[0] == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    te = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if te is not None:
        if te.lower() != "chunked":
            raise _Malformed(f"Transfer-Encoding {te!r}")
        body = await _read_chunked(reader, max_body)
    elif length is not None:
        if not length.isdigit():
            raise _Malformed(f"Content-Length {length[:30]!r}")
        if int(length) > max_body:
            raise _TooLarge()
        body = await reader.readexactly(int(length))
    elif status in (204, 304):
        body = b""
    else:  # neither: the body runs to the end of the connection
        body, keep = await _read_to_close(reader, max_body), False
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        body = _gunzip(body, max_body)
    elif encoding != "identity":
        raise _Malformed(f"Content-Encoding {encoding!r}, not the gzip it was offered")
    return status, headers, body, keep


async def _read_chunked(reader: asyncio.StreamReader, max_body: int = MAX_BODY) -> bytes:
    parts, total = [], 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = line[:-2].split(b";", 1)[0].strip()  # a chunk extension after ';' is ignored
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise _Malformed(f"chunk size line {_show(line)}")
        n = int(size, 16)
        if n == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields: nothing we use
            return b"".join(parts)
        total += n
        if total > max_body:
            raise _TooLarge()
        parts.append(await reader.readexactly(n))
        if await reader.readexactly(2) != b"\r\n":
            raise _Malformed("chunk data not followed by CRLF")


async def _read_to_close(reader: asyncio.StreamReader, max_body: int = MAX_BODY) -> bytes:
    parts, total = [], 0
    while chunk := await reader.read(65536):
        total += len(chunk)
        if total > max_body:
            raise _TooLarge()
        parts.append(chunk)
    return b"".join(parts)


def _gunzip(body: bytes, max_body: int = MAX_BODY) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_body)
    except zlib.error as err:
        raise _Malformed(f"gzip body: {err}") from None
    if d.unconsumed_tail:
        raise _TooLarge()
    return out


def _readable(sock) -> bool:
    """Whether an idle connection's socket has something to read: between replies that can only be
    the server's close (or junk), which the event loop has not seen yet if it was not running, as
    between two calls of the engine; httpcore makes the same check before reusing a connection."""
    if sock is None:
        return False
    if hasattr(select, "poll"):  # select() fails on descriptors above 1023
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _show(raw: bytes) -> str:
    return repr(raw[:60].decode("latin-1"))
