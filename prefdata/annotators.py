"""Importers for multi-annotator layouts: rows judged by several people become preference pairs whose
annotators are vote columns (`{type: column, kind: verdict}` families, Dawid and Skene's original use).

PandaLM (Wang et al. 2023, test set `testset-v1.json`): `instruction`, `input`, `response1`,
`response2`, `annotator1..N` each 1 (response1 better), 2 (response2 better) or 0 (about the same).

    prefdata datasets import pandalm_dev.jsonl.gz --name pandalm --layout pandalm

Each row becomes one pair:
- prompt: the instruction, then the input when there is one;
- chosen / rejected: by the annotators' majority; rows whose majority is "about the same" have no
  chosen side and are left out (the count is printed);
- `annotator1..N`: each annotator's verdict about chosen (+1, -1, 0 for a tie; null if absent);
- `agreement`: how many annotators gave the majority label (for `eval agreement`);
- `gold`: 1 where every annotator agreed (the label is verified), null otherwise (for `eval gold
  --gold-column gold`);
- `response1_is`: "chosen" or "rejected", the order the annotators and judges saw (for `kind: ab`
  verdicts about response1/response2, such as published judge outputs);
- `id`: "pandalm-<idx>", so side files of verdicts keyed the same way join by id.
Responses that are JSON `true` or numbers are kept as their text, as the annotators saw them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa

from prefdata.errors import DataError

LAYOUTS = ("pandalm",)


def _rows(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"cannot read: {e}", file=str(path)) from None
    if text.lstrip().startswith("["):
        try:
            yield from enumerate(json.loads(text), 1)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", file=str(path)) from None
        return
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", file=str(path), row=i) from None


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def pandalm(path: str | Path) -> tuple[pa.Table, dict]:
    """(pair table, {"pairs", "ties_left_out", "annotators"}) from a PandaLM-layout file."""
    path = Path(path)
    out, ties, width = [], 0, 0
    for i, r in _rows(path):
        if not isinstance(r, dict):
            raise DataError("expected a JSON object per row", file=str(path), row=i)
        for field in ("instruction", "response1", "response2"):
            if field not in r:
                raise DataError(f"missing field '{field}'", file=str(path), row=i, field=field)
        names = sorted((k for k in r if k.startswith("annotator") and k[9:].isdigit()), key=lambda k: int(k[9:]))
        if not names:
            raise DataError("no annotator1..N fields", file=str(path), row=i, field="annotator1")
        votes = []
        for k in names:
            v = r[k]
            if v is None:
                votes.append(None)
                continue
            if str(v) not in ("0", "1", "2"):
                raise DataError(f"expected 1, 2 or 0, got {v!r}", file=str(path), row=i, field=k)
            votes.append(int(v))
        given = [v for v in votes if v is not None]
        counts = {v: given.count(v) for v in (1, 2, 0)}
        top = max(counts.values())
        winners = [v for v, c in counts.items() if c == top]
        if len(winners) != 1 or winners[0] == 0:
            ties += 1
            continue
        label = winners[0]
        prompt = _text(r["instruction"]) + (f"\n\n{_text(r['input'])}" if r.get("input") else "")
        a, b = _text(r["response1"]), _text(r["response2"])
        chosen, rejected = (a, b) if label == 1 else (b, a)
        row = {"id": f"pandalm-{r.get('idx', i - 1)}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
               "agreement": top, "gold": 1 if top == len(given) else None,
               "response1_is": "chosen" if label == 1 else "rejected"}
        for k, v in zip(names, votes):
            row[k] = None if v is None else (0 if v == 0 else (1 if v == label else -1))
        for k in ("idx", "cmp_key", "motivation_app"):
            if k in r:
                row[f"source_{k}"] = _text(r[k])
        width = max(width, len(names))
        out.append(row)
    if not out:
        raise DataError("no row with a majority label", file=str(path))
    cols = {k: pa.array([r.get(k) for r in out]) for k in dict.fromkeys(k for r in out for k in r)}
    for k in cols:
        if k.startswith("annotator") or k in ("gold", "agreement"):
            cols[k] = pa.array([r.get(k) for r in out], pa.int64())
    return pa.table(cols), {"pairs": len(out), "ties_left_out": ties, "annotators": width}
