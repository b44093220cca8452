"""Review elsewhere: a version's review queue out to Argilla or Label Studio, their answers back in.

`export_queue` writes the pairs in the order the review server offers them (`rank.priority`, capped
by `budget`) in the tool's own import format; `import_decisions` reads that tool's export and writes
each submitted answer into the same decisions log the browser writes (`db.ReviewDB`), so
`prefdata review commit REF` applies them with everything else (kappa, vote-vs-human, lineage).

Which answer a tool shows first is random per pair (a hash of the pair id, as on our own page), so
a tool's "first answer" does not leak the stored label. The layout is recomputed on import, and the
answer texts in the file must still match the version's, so a file from another version (or one
whose fields were edited) is refused instead of flipping the wrong side.

Formats (learned from the tools' documentation):
- Argilla 2.x: a directory as `rg.Dataset.to_disk` writes it, `records.json` (records with `id`,
  `fields`, `metadata`, `suggestions` keyed by question, `responses` keyed by question, each a list of
  `{value, user_id, status}`) and `.argilla/settings.json` + `.argilla/dataset.json`, so
  `rg.Dataset.from_disk(DIR)` loads it. The question is a LabelQuestion `preference` with the labels
  response1 / response2 / tie / drop; the automatic vote goes in as its suggestion.
- Label Studio: a JSON task list, each `{"data": {...}, "predictions": [{"result": [...]}]}`, with the
  labeling config written beside it (`<file>.labelconfig.xml`: two Text tags and a single Choices
  `preference`). Its JSON export (tasks with `annotations[].result[].value.choices`) comes back in;
  a cancelled (skipped) annotation is a skip.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa

from prefdata.errors import DataError, PrefdataError
from prefdata.review.app import is_swapped
from prefdata.review.db import ReviewDB, check_annotator, db_path
from prefdata.review.pages import answer_text
from prefdata.review.rank import priority

FORMATS = ("argilla", "labelstudio")
QUESTION = "preference"  # the Argilla question and the Label Studio Choices name
LAYOUT_SALT = "interchange"  # one fixed layout per pair for every file exported from a version
# Tool label -> what it says about answer 1 / 2; resolved into keep/flip with the pair's layout.
ARGILLA_LABELS = {"response1": "Response 1 is better", "response2": "Response 2 is better",
                  "tie": "Tie: neither is better", "drop": "Drop: the pair is unusable"}
LS_CHOICES = {"Answer 1": "response1", "Answer 2": "response2", "Tie": "tie", "Drop": "drop"}
LS_CONFIG = """<View>
  <Header value="Conversation"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: grid; grid-template-columns: 1fr 1fr; column-gap: 1em">
    <View><Header value="Answer 1"/><Text name="answer1" value="$answer1"/></View>
    <View><Header value="Answer 2"/><Text name="answer2" value="$answer2"/></View>
  </View>
  <Choices name="preference" toName="prompt" choice="single" showInLine="true" required="true">
    <Choice value="Answer 1"/>
    <Choice value="Answer 2"/>
    <Choice value="Tie"/>
    <Choice value="Drop"/>
  </Choices>
</View>
"""


def conversation_text(prompt) -> str:
    """The prompt messages as plain text with their roles (tools show a field as text)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"[{m.get('role')}] {m.get('content') or ''}" for m in prompt or [])


def layout(pair_id: str) -> bool:
    """True when answer 1 in an exported file is the stored *rejected* answer."""
    return is_swapped(LAYOUT_SALT, pair_id)


def decision_of(label: str, swapped: bool) -> str:
    """A tool label (response1 / response2 / tie / drop / skip) as a decision on the stored label."""
    if label in ("tie", "drop", "skip"):
        return label
    first_wins = label == "response1"
    return "keep" if first_wins != swapped else "flip"


def _queue(version, table: pa.Table, budget: int | None) -> list[dict]:
    """Rows in queue order, one per pair id, with the exported layout applied."""
    if budget is not None and budget < 1:
        raise PrefdataError("--budget must be at least 1")
    ids = priority(table)[:budget] if budget else priority(table)
    first = {}
    for i, pid in enumerate(table.column("id").to_pylist()):
        first.setdefault(str(pid), i)
    out = []
    for rank, pid in enumerate(ids):
        row = table.slice(first[pid], 1).to_pylist()[0]
        swapped = layout(pid)
        c, r = answer_text(row["chosen"]), answer_text(row["rejected"])
        p = row.get("label_prob")
        out.append({"pair_id": pid, "rank": rank, "prompt": conversation_text(row["prompt"]),
                    "answer1": r if swapped else c, "answer2": c if swapped else r, "swapped": swapped,
                    # The automatic vote, as a suggestion: the side it believes in and how sure it is.
                    "label_prob": None if p is None else float(p)})
    return out


def _vote_label(q: dict) -> tuple[str, float] | None:
    p = q["label_prob"]
    if p is None:
        return None
    chosen_first = not q["swapped"]
    keeps = p >= 0.5
    return ("response1" if keeps == chosen_first else "response2"), round(max(p, 1.0 - p), 6)


def _argilla_records(queue: list[dict], ref: str) -> list[dict]:
    recs = []
    for q in queue:
        vote = _vote_label(q)
        recs.append({
            "id": q["pair_id"],
            "fields": {"prompt": q["prompt"], "response1": q["answer1"], "response2": q["answer2"]},
            "metadata": {"pair_id": q["pair_id"], "queue_rank": q["rank"], "prefdata_ref": ref},
            "suggestions": ({QUESTION: {"value": vote[0], "score": vote[1], "agent": "prefdata vote"}}
                            if vote else {}),
            "responses": {},
            "vectors": {},
            "status": "pending",
            "_server_id": None,
        })
    return recs


def _argilla_settings(ref: str) -> dict:
    text = lambda name, title: {"name": name, "title": title, "required": True, "description": None,
                                "settings": {"type": "text", "use_markdown": False}}
    return {
        "guidelines": (f"Pairs from {ref}, least certain first. Pick the better response, or mark a tie, "
                       "or drop a pair that is unusable (both broken, off-topic, unsafe to train on)."),
        "allow_extra_metadata": True,
        "distribution": {"strategy": "overall", "min_submitted": 1},
        "fields": [text("prompt", "Conversation"), text("response1", "Response 1"), text("response2", "Response 2")],
        "questions": [{"name": QUESTION, "title": "Which response is better?", "description": None, "required": True,
                       "settings": {"type": "label_selection", "visible_options": None,
                                    "options": [{"value": v, "text": t}
                                                for v, t in ARGILLA_LABELS.items()]}}],
        "metadata": [{"name": "queue_rank", "title": "queue rank", "visible_for_annotators": False,
                      "settings": {"type": "integer", "min": None, "max": None}}],
        "vectors": [],
    }


def _labelstudio_tasks(queue: list[dict], ref: str) -> list[dict]:
    tasks = []
    for q in queue:
        task = {"data": {"pair_id": q["pair_id"], "queue_rank": q["rank"], "prefdata_ref": ref,
                         "prompt": q["prompt"], "answer1": q["answer1"], "answer2": q["answer2"]}}
        vote = _vote_label(q)
        if vote:
            shown = {v: k for k, v in LS_CHOICES.items()}[vote[0]]
            task["predictions"] = [{"model_version": "prefdata vote", "score": vote[1],
                                    "result": [{"from_name": QUESTION, "to_name": "prompt", "type": "choices",
                                                "value": {"choices": [shown]}}]}]
        tasks.append(task)
    return tasks


def _write_json(path: Path, obj) -> None:
    """Whole or not at all: written beside, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def export_queue(ref: str, fmt: str, out: str | Path, *, budget: int | None = None) -> dict:
    """Write the review queue of `ref` for Argilla (`out` is a directory) or Label Studio (`out` is
    the task JSON; the labeling config lands beside it). Returns {ref, pairs, files}."""
    from prefdata.store import load_table, resolve

    if fmt not in FORMATS:
        raise PrefdataError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
    version = _pair_version(resolve(ref))
    queue = _queue(version, load_table(str(version.path)), budget)
    out = Path(out)
    if fmt == "argilla":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PrefdataError(f"{out}: Argilla's to_disk layout needs a new or empty directory")
        files = [out / "records.json", out / ".argilla" / "settings.json", out / ".argilla" / "dataset.json"]
        _write_json(files[1], _argilla_settings(version.ref))
        _write_json(files[2], {"name": f"{version.name}-{version.version}-review", "guidelines": None,
                               "allow_extra_metadata": True, "status": "ready"})
        _write_json(files[0], _argilla_records(queue, version.ref))
    else:
        files = [out, out.with_name(out.name + ".labelconfig.xml")]
        files[1].parent.mkdir(parents=True, exist_ok=True)
        files[1].write_text(LS_CONFIG, encoding="utf-8")
        _write_json(out, _labelstudio_tasks(queue, version.ref))
    return {"ref": version.ref, "pairs": len(queue), "files": [str(f) for f in files]}


# ----------------------------------------------------------------------------- import


def _pair_version(version):
    if version.manifest.get("kind") != "pair":
        raise PrefdataError(f"{version.ref} is a '{version.manifest.get('kind')}' dataset; review needs pairs")
    return version


def _load(path: Path, fmt: str) -> tuple[Path, list]:
    if fmt == "argilla" and path.is_dir():
        path = path / "records.json"
    if not path.is_file():
        raise PrefdataError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", file=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):  # a wrapped record list
        data = data["records"]
    if not isinstance(data, list):
        raise DataError("expected a JSON list of records (tasks)", file=str(path))
    return path, data


def _get(rec: dict, key: str, kind, where: str, file: Path, i: int, *, required: bool = True):
    v = rec.get(key) if isinstance(rec, dict) else None
    if v is None and not required:
        return None
    if not isinstance(v, kind):
        raise DataError(f"record {i}: expected {getattr(kind, '__name__', kind)}, got {type(v).__name__}",
                        file=str(file), field=where)
    return v


def _argilla_answers(recs: list, file: Path) -> list[tuple[int, str, str, dict, str | None]]:
    """(record index, pair id, label, shown texts, user) per submitted response."""
    out = []
    for i, rec in enumerate(recs):
        if not isinstance(rec, dict):
            raise DataError(f"record {i}: expected an object", file=str(file), field=f"[{i}]")
        meta = _get(rec, "metadata", dict, f"[{i}].metadata", file, i, required=False) or {}
        pid = meta.get("pair_id") or rec.get("id")
        if not isinstance(pid, str):
            raise DataError(f"record {i}: no pair id (metadata.pair_id or id)", file=str(file), field=f"[{i}].id")
        fields = _get(rec, "fields", dict, f"[{i}].fields", file, i)
        responses = _get(rec, "responses", dict, f"[{i}].responses", file, i, required=False) or {}
        answers = responses.get(QUESTION) or []
        if not isinstance(answers, list):
            raise DataError(f"record {i}: expected a list of responses", file=str(file),
                            field=f"[{i}].responses.{QUESTION}")
        for j, a in enumerate(answers):
            where = f"[{i}].responses.{QUESTION}[{j}]"
            if not isinstance(a, dict):
                raise DataError(f"record {i}: expected an object", file=str(file), field=where)
            status = a.get("status", "submitted")
            if status == "draft":
                continue  # not given yet
            value = "skip" if status == "discarded" else a.get("value")
            if isinstance(value, list) and len(value) == 1:  # a multi-label question answered once
                value = value[0]
            if value not in ARGILLA_LABELS and value != "skip":
                raise DataError(f"record {i}: {value!r} is not one of {', '.join(ARGILLA_LABELS)}",
                                file=str(file), field=where + ".value")
            user = a.get("user_id")
            out.append((i, pid, value, {"response1": fields.get("response1"), "response2": fields.get("response2")},
                        None if user in (None, "None") else str(user)))
    return out


def _labelstudio_answers(tasks: list, file: Path) -> list[tuple[int, str, str, dict, str | None]]:
    out = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise DataError(f"record {i}: expected a task object", file=str(file), field=f"[{i}]")
        data = _get(task, "data", dict, f"[{i}].data", file, i)
        pid = data.get("pair_id")
        if not isinstance(pid, str):
            raise DataError(f"record {i}: no pair id", file=str(file), field=f"[{i}].data.pair_id")
        anns = task.get("annotations") or []
        if not isinstance(anns, list):
            raise DataError(f"record {i}: expected a list", file=str(file), field=f"[{i}].annotations")
        for j, ann in enumerate(anns):
            where = f"[{i}].annotations[{j}]"
            if not isinstance(ann, dict):
                raise DataError(f"record {i}: expected an object", file=str(file), field=where)
            user = ann.get("completed_by")
            if isinstance(user, dict):  # some exports expand the user
                user = user.get("email") or user.get("id")
            user = None if user is None else str(user)
            shown = {"response1": data.get("answer1"), "response2": data.get("answer2")}
            if ann.get("was_cancelled"):
                out.append((i, pid, "skip", shown, user))
                continue
            result = ann.get("result")
            if not isinstance(result, list):
                raise DataError(f"record {i}: expected a list", file=str(file), field=where + ".result")
            picks = [r for r in result if isinstance(r, dict) and r.get("from_name") == QUESTION]
            if not picks:
                continue  # annotated other controls only: nothing said about this question
            choices = (picks[-1].get("value") or {}).get("choices") if isinstance(picks[-1].get("value"), dict) else None
            if not (isinstance(choices, list) and len(choices) == 1 and choices[0] in LS_CHOICES):
                raise DataError(f"record {i}: {choices!r} is not exactly one of {', '.join(LS_CHOICES)}",
                                file=str(file), field=where + ".result.value.choices")
            out.append((i, pid, LS_CHOICES[choices[0]], shown, user))
    return out


def _annotator(base: str, user: str | None, users: set) -> str:
    """The annotator name: `base` for a file from one person, `base.<user>` when it holds several."""
    if len(users) <= 1 or user is None:
        return base
    return (base + "." + re.sub(r"[^\w.@+-]", "_", user))[:64]


def import_decisions(ref: str, fmt: str, path: str | Path, *, annotator: str) -> dict:
    """Read a tool's export and add its answers to the decisions log of `ref`. The whole file is
    checked before anything is written, then every new decision goes in one transaction; answers
    equal to the annotator's standing decision are not written again (re-import is a no-op).
    Returns counts: {ref, answers, written, unchanged, by_decision, annotators}."""
    from prefdata.store import load_table, resolve

    if fmt not in FORMATS:
        raise PrefdataError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
    check_annotator(annotator)
    version = _pair_version(resolve(ref))
    file, recs = _load(Path(path), fmt)
    answers = (_argilla_answers if fmt == "argilla" else _labelstudio_answers)(recs, file)
    table = load_table(str(version.path))
    known = {q["pair_id"]: q for q in _queue(version, table, None)}
    users = {a[4] for a in answers if a[4] is not None}
    rows = []
    for i, pid, label, shown, user in answers:
        q = known.get(pid)
        if q is None:
            raise DataError(f"record {i}: pair '{pid}' is not in {version.ref}", file=str(file), field=f"[{i}].id")
        for side, want in (("response1", q["answer1"]), ("response2", q["answer2"])):
            if shown[side] is not None and shown[side] != want:
                name = side if fmt == "argilla" else "answer" + side[-1]
                raise DataError(f"record {i}: the text differs from pair '{pid}' in {version.ref} (exported from "
                                "another version, or edited)", file=str(file),
                                field=f"[{i}].{'fields' if fmt == 'argilla' else 'data'}.{name}")
        rows.append((pid, _annotator(annotator, user, users), decision_of(label, q["swapped"]), q["swapped"]))
    db = ReviewDB(db_path(version))
    try:
        db.init_pairs(priority(table))
        db.set_meta(ref=version.ref, sha=version.sha)
        written, unchanged = db.decide_many(rows, key=f"import:{fmt}")
    finally:
        db.close()
    by = {}
    for _, _, d, _ in rows:
        by[d] = by.get(d, 0) + 1
    return {"ref": version.ref, "file": str(file), "answers": len(rows), "written": written, "unchanged": unchanged,
            "by_decision": dict(sorted(by.items())), "annotators": sorted({r[1] for r in rows})}
