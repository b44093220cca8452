"""Credential redaction: the one place that decides what looks secret.

Everything prefdata writes or prints (manifests, cards, recorded commands, errors, progress bars,
logs) passes through `redact` or `redact_obj` first. Three kinds of secret are masked:

- userinfo in URLs: `http://user:pass@host` -> `http://***@host`;
- token-like query parameters: `?api_key=...`, `&token=...`, `&sig=...` -> `?api_key=***`;
- values that look like API keys wherever they appear: `sk-...`, `hf_...`, `ghp_...`, `Bearer ...`,
  and long high-entropy tokens.

A leaf module (no prefdata imports) so every layer, including the CLI's last-resort error handler,
can use it without import cycles. Redaction is idempotent: `redact(redact(x)) == redact(x)`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

MASK = "***"

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/\s@?#]+)@")
_QUERY_KEYS = ("key", "api_key", "apikey", "api-key", "token", "access_token", "refresh_token", "id_token",
               "auth", "authorization", "sig", "signature", "secret", "client_secret", "password", "pass",
               "passwd", "pwd", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "code")
_QUERY = re.compile(r"(?P<lead>[?&;](?:%s)=)(?P<val>[^&#\s'\"]+)" % "|".join(re.escape(k) for k in _QUERY_KEYS),
                    re.IGNORECASE)
# Vendor key shapes: OpenAI/Anthropic (sk-, sk-proj-, sk-ant-), Hugging Face (hf_), GitHub (ghp_ ...),
# Slack (xox?-), AWS access key ids, Google API keys, GitLab personal tokens.
_PREFIXED = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}"
    r"|xox[abposr]-[A-Za-z0-9-]{8,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}|glpat-[A-Za-z0-9_-]{16,})")
_BEARER = re.compile(r"(?P<lead>\b(?:Bearer|Basic|Token)\s+)(?P<val>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
# Candidates for the entropy test: long runs of token characters with no spaces.
_LONG = re.compile(r"[A-Za-z0-9_\-+/=.]{32,}")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _high_entropy(token: str) -> bool:
    """A random-looking token: mixed letters and digits, high per-character entropy.

    Pure hex is left alone: content hashes, fingerprints and checksums are hex, are all over
    manifests, and are not secrets. Paths and dotted names are left alone too.
    """
    if _HEX.fullmatch(token) or "/" in token or token.count(".") > 1:
        return False
    core = token.strip("=")
    classes = [0 if c.islower() else 1 if c.isupper() else 2 for c in core if c.isalnum()]
    if len(set(classes)) < 3 or len(classes) < 24 or _entropy(core) < 4.0:
        return False
    # Random tokens switch between lower, upper and digits every other character or so (0.6 on
    # average); names made of words (CamelCase, SNAKE_CASE, versions) switch only at word boundaries.
    switches = sum(a != b for a, b in zip(classes, classes[1:]))
    return switches / len(classes) >= 0.45


def looks_like_key(value: str) -> bool:
    """Whether `value` (one token) looks like a credential rather than a name."""
    value = value.strip()
    return bool(_PREFIXED.fullmatch(value) or _PREFIXED.match(value)
                or (len(value) >= 32 and _high_entropy(value)))


def redact(text: Any) -> Any:
    """`text` with credentials masked; non-strings are returned unchanged."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    text = _QUERY.sub(lambda m: m["lead"] + MASK, text)
    text = _BEARER.sub(lambda m: m["lead"] + MASK, text)
    text = _PREFIXED.sub(MASK, text)
    return _LONG.sub(lambda m: MASK if _high_entropy(m.group(0)) else m.group(0), text)


def redact_obj(obj: Any) -> Any:
    """`redact` applied to every string inside dicts, lists and tuples (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


class LogFilter:
    """A logging filter (for handlers) that redacts every record's message: third-party libraries log
    URLs (httpx logs each request's), and a handler-level filter sees records from every logger."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Redact what the root logger's handlers, and Python's last-resort handler, print (idempotent)."""
    import logging

    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, LogFilter) for f in handler.filters):
            handler.addFilter(LogFilter())
