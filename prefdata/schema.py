"""The record types every stage exchanges, as Arrow schemas (see ARCHITECTURE.md, "Schema").

Chat messages are `list[{"role", "content"}]`, the conversational format TRL and vLLM use.
`meta` and `sampling` are JSON strings: they vary per generator, and a JSON string keeps the
Parquet schema stable across versions (and `datasets` features simple).

Extra columns beyond the ones below are allowed and kept (generators add their own); the
required columns must be present with the given types.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROMPT = pa.schema([
    ("id", pa.string()),
    ("prompt", MESSAGES),
    ("meta", pa.string()),
])

COMPLETION = pa.schema([
    ("id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", MESSAGES),
    ("completion", MESSAGES),
    ("engine", pa.string()),
    ("model", pa.string()),
    ("sampling", pa.string()),
    ("finish_reason", pa.string()),
    ("logprob", pa.float64()),
])

PAIR = pa.schema([
    ("id", pa.string()),
    ("prompt", MESSAGES),
    ("chosen", MESSAGES),
    ("rejected", MESSAGES),
    ("source", pa.string()),
    ("chosen_score", pa.float64()),
    ("rejected_score", pa.float64()),
    ("votes", pa.list_(pa.float64())),
    ("strength_mean", pa.float64()),
    ("strength_std", pa.float64()),
    ("label_prob", pa.float64()),
    ("margin", pa.float64()),
    ("flipped", pa.bool_()),
    ("meta", pa.string()),
])

UNPAIRED = pa.schema([
    ("id", pa.string()),
    ("prompt", MESSAGES),
    ("completion", MESSAGES),
    ("label", pa.bool_()),
    ("weight", pa.float64()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "prompt": PROMPT,
    "completion": COMPLETION,
    "pair": PAIR,
    "unpaired": UNPAIRED,
}

# Columns a row must carry; everything else in a schema may be filled with its default.
REQUIRED: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",),
    "completion": ("prompt", "completion"),
    "pair": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}

# Defaults for optional columns when a source lacks them (a freshly imported pair has no votes
# yet, is taken at face value, and has not been flipped).
DEFAULTS: dict[str, dict[str, object]] = {
    "prompt": {"meta": "{}"},
    "completion": {"engine": "", "model": "", "sampling": "{}", "finish_reason": "", "logprob": None},
    "pair": {"source": "", "chosen_score": None, "rejected_score": None, "votes": None,
             "strength_mean": None, "strength_std": None, "label_prob": 1.0, "margin": 0.0,
             "flipped": False, "meta": "{}"},
    "unpaired": {"weight": 1.0},
}


def content_id(*parts: object) -> str:
    """A stable content hash (hex, 16 chars) of JSON-serialisable parts, e.g. a pair's
    (prompt, chosen, rejected). Same content -> same id, across runs and machines."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
