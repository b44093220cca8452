"""Review elsewhere: a version's review queue out to Argilla or Label Studio, their answers back in.

`export_queue` writes the pairs in the order the review server offers them (`rank.priority`, capped
by `budget`) in the tool's own import format; `import_decisions` reads that tool's export and writes
each submitted answer into the same decisions log the browser writes (`db.ReviewDB`), so
`prefdata review commit REF` applies them with everything else (kappa, vote-vs-human, lineage).

Which answer a tool shows first is random per pair (a hash of the pair id, as on our own page), so
a tool's "first answer" does not leak the stored label. The layout is recomputed on import, and the
answer texts in the file must still match the version's, so a file from another version (or one
whose fields were edited) is refused instead of flipping the wrong side.

Formats (checked against the argilla 2.8 SDK and label-studio-sdk's converter, tests/test_interop.py):
- Argilla 2.x: a directory as `rg.Dataset.to_disk` writes it, `records.json` (records with `id`,
  `fields`, `metadata`, `suggestions` keyed by question, `responses` keyed by question, each a list of
  `{value, user_id}`, and the record's `status`) and `.argilla/settings.json` + `.argilla/dataset.json`
  in the SDK's own layout (distribution strategy `overlap`), so `rg.Dataset.from_disk(DIR)` loads it.
  The question is a LabelQuestion `preference` with the labels response1 / response2 / tie / drop;
  the automatic vote goes in as its suggestion.
  Only submitted answers are labels. The SDK's `to_disk`/`to_json` leave each response's status out,
  so for those files it is inferred from the record's status, which the server sets to `completed`
  once `min_submitted` answers are submitted (read from `.argilla/settings.json` beside the records, 1
  without it): a `pending` record with min_submitted 1 holds no submitted answer; a `completed` one with
  exactly min_submitted answers holds only submitted ones; any other record is refused, naming the
  export that keeps statuses: `dataset.records.to_list(flatten=True)` (or `to_datasets()`), whose
  `preference.responses.status` is read as is. A discarded answer is a skip, a draft is left out.
- Label Studio: a JSON task list, each `{"data": {...}, "predictions": [{"result": [...]}]}`, with the
  labeling config written beside it (`<file>.labelconfig.xml`: two Text tags and a single Choices
  `preference`). Its JSON export (tasks with `annotations[].result[].value.choices`) comes back in;
  a cancelled (skipped) annotation is a skip. So does its JSON_MIN export (one flat row per
  annotation: the task's data, `preference`, `annotator`; cancelled annotations are not in it).
  Annotators are named by email where the file gives one (`completed_by` expanded to a user, or
  JSON_MIN's `annotator`), also for that user's answers that carry only the numeric id.
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
ARGILLA_STATUSES = ("submitted", "discarded", "draft")
# How to get an Argilla file that keeps each answer's status (said when one cannot be inferred).
ARGILLA_WITH_STATUS = ("export with statuses instead: json.dump(dataset.records.to_list(flatten=True), "
                       "open('answers.json', 'w'), default=str)")
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


_UNSAVED = {"id": None, "inserted_at": None, "updated_at": None}  # what the SDK writes for a dataset not yet created


def _argilla_settings(ref: str) -> dict:
    """`.argilla/settings.json` as `rg.Settings.to_json` writes it (argilla 2.8), so `Settings.from_json`
    reads it back unchanged; the distribution strategy is Argilla's only one, `overlap`."""
    text = lambda name, title: {**_UNSAVED, "name": name, "settings": {"type": "text", "use_markdown": False},
                                "title": title, "required": True, "description": None, "dataset_id": None,
                                "type": "text"}
    return {
        "guidelines": (f"Pairs from {ref}, least certain first. Pick the better response, or mark a tie, "
                       "or drop a pair that is unusable (both broken, off-topic, unsafe to train on)."),
        "questions": [{**_UNSAVED, "name": QUESTION,
                       "settings": {"type": "label_selection",
                                    "options": [{"text": t, "value": v} for v, t in ARGILLA_LABELS.items()],
                                    "visible_options": len(ARGILLA_LABELS)},
                       "title": "Which response is better?", "description": None, "required": True,
                       "dataset_id": None, "type": "label_selection"}],
        "fields": [text("prompt", "Conversation"), text("response1", "Response 1"), text("response2", "Response 2")],
        "vectors": [],
        "metadata": [{**_UNSAVED, "name": "queue_rank",
                      "settings": {"visible_for_annotators": False, "min": None, "max": None, "type": "integer"},
                      "title": "queue rank", "visible_for_annotators": False, "dataset_id": None}],
        "allow_extra_metadata": True,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "mapping": None,
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
        # dataset.json as the SDK writes a dataset not yet on a server (from_disk sets the workspace).
        _write_json(files[2], {**_UNSAVED, "name": f"{version.name}-{version.version}-review", "status": "draft",
                               "guidelines": None, "allow_extra_metadata": True, "distribution": None,
                               "workspace_id": None, "last_activity_at": None})
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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not valid JSON ({e})", file=str(path)) from None
    try:
        data = json.loads(text)
    except ValueError as e:
        data = _json_lines(text)  # Argilla's `to_datasets().to_json(...)` writes one record a line
        if data is None:
            raise DataError(f"not valid JSON ({e})", file=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):  # a wrapped record list
        data = data["records"]
    if not isinstance(data, list):
        raise DataError("expected a JSON list of records (tasks)", file=str(path))
    return path, data


def _json_lines(text: str) -> list | None:
    """The records of a JSON-lines file, or None when `text` is not one (two objects at least)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return None
    try:
        recs = [json.loads(ln) for ln in lines]
    except ValueError:
        return None
    return recs if all(isinstance(r, dict) for r in recs) else None


def _get(rec: dict, key: str, kind, where: str, file: Path, i: int, *, required: bool = True):
    v = rec.get(key) if isinstance(rec, dict) else None
    if v is None and not required:
        return None
    if not isinstance(v, kind):
        raise DataError(f"record {i}: expected {getattr(kind, '__name__', kind)}, got {type(v).__name__}",
                        file=str(file), field=where)
    return v


def _argilla_min_submitted(file: Path) -> int:
    """`distribution.min_submitted` of the dataset whose `records.json` this is (its `.argilla/settings.json`
    beside it, as `to_disk` writes it); Argilla's default, 1, without one."""
    try:
        k = json.loads((file.parent / ".argilla" / "settings.json").read_text(encoding="utf-8"))["distribution"][
            "min_submitted"]
    except (OSError, ValueError, KeyError, TypeError):
        return 1
    return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def _argilla_record(rec: dict, i: int, file: Path) -> tuple[str, dict, list, str]:
    """(pair id, shown texts, [(value, user, status or None, field)], field prefix) of one record, in
    either layout the SDK writes: nested (`to_disk`, `to_json`, `to_list()`) or flat (`to_list(flatten=True)`,
    `to_datasets()`), whose answers are the parallel lists `preference.responses[.users|.status]`."""
    flat_key = f"{QUESTION}.responses"
    if "fields" not in rec and (flat_key in rec or "response1" in rec):
        pid = rec.get("pair_id") or rec.get("id")
        shown = {"response1": rec.get("response1"), "response2": rec.get("response2")}
        cols = [rec.get(flat_key), rec.get(flat_key + ".users"), rec.get(flat_key + ".status")]
        for c, key in zip(cols, (flat_key, flat_key + ".users", flat_key + ".status")):
            if c is not None and not isinstance(c, list):
                raise DataError(f"record {i}: expected a list", file=str(file), field=f"[{i}].{key}")
        values = cols[0] or []
        users, statuses = cols[1] or [None] * len(values), cols[2] or [None] * len(values)
        if not len(values) == len(users) == len(statuses):
            raise DataError(f"record {i}: {flat_key}, .users and .status differ in length", file=str(file),
                            field=f"[{i}].{flat_key}")
        answers = [(v, u, st, f"[{i}].{flat_key}[{j}]") for j, (v, u, st) in enumerate(zip(values, users, statuses))]
        return pid, shown, answers, "flat"
    meta = _get(rec, "metadata", dict, f"[{i}].metadata", file, i, required=False) or {}
    pid = meta.get("pair_id") or rec.get("id")
    fields = _get(rec, "fields", dict, f"[{i}].fields", file, i)
    responses = _get(rec, "responses", dict, f"[{i}].responses", file, i, required=False) or {}
    items = responses.get(QUESTION) or []
    if not isinstance(items, list):
        raise DataError(f"record {i}: expected a list of responses", file=str(file),
                        field=f"[{i}].responses.{QUESTION}")
    answers = []
    for j, a in enumerate(items):
        where = f"[{i}].responses.{QUESTION}[{j}]"
        if not isinstance(a, dict):
            raise DataError(f"record {i}: expected an object", file=str(file), field=where)
        answers.append((a.get("value"), a.get("user_id"), a.get("status"), where))
    return pid, {"response1": fields.get("response1"), "response2": fields.get("response2")}, answers, "nested"


def _argilla_answers(recs: list, file: Path) -> list[tuple[int, str, str | None, dict, str | None]]:
    """(record index, pair id, label, shown texts, user) per answer; the label is None for one that was
    not submitted (a draft, or any answer of a pending record), which is checked but not a decision."""
    out = []
    k = _argilla_min_submitted(file)
    for i, rec in enumerate(recs):
        if not isinstance(rec, dict):
            raise DataError(f"record {i}: expected an object", file=str(file), field=f"[{i}]")
        pid, shown, answers, _ = _argilla_record(rec, i, file)
        if not isinstance(pid, str):
            raise DataError(f"record {i}: no pair id (metadata.pair_id or id)", file=str(file), field=f"[{i}].id")
        checked = []
        for value, user, status, where in answers:
            if isinstance(status, dict):  # an enum serialised by a custom encoder
                status = status.get("value")
            if status is not None and status not in ARGILLA_STATUSES:
                raise DataError(f"record {i}: status {status!r} is not one of {', '.join(ARGILLA_STATUSES)}",
                                file=str(file), field=where + ".status")
            if isinstance(value, list) and len(value) == 1:  # a multi-label question answered once
                value = value[0]
            if value is not None and value not in ARGILLA_LABELS:
                raise DataError(f"record {i}: {value!r} is not one of {', '.join(ARGILLA_LABELS)}",
                                file=str(file), field=where + ".value")
            checked.append((value, None if user in (None, "None") else str(user), status, where))
        unknown = [a for a in checked if a[2] is None]
        if unknown:
            # The SDK's to_disk/to_json write no status per answer: the record's own status tells, where it can.
            rs = rec.get("status")
            if rs == "pending" and k == 1:
                inferred = "draft"  # no answer submitted yet (a draft, or discarded: neither is a label)
            elif rs == "completed" and len(unknown) == len(checked) == k:
                inferred = "submitted"  # exactly min_submitted answers, and the record is complete
            else:
                raise DataError(
                    f"record {i}: {len(unknown)} answer(s) without a status on a record that is {rs!r} with "
                    f"min_submitted {k}, so submitted answers cannot be told from drafts and discarded ones "
                    f"(Argilla's to_disk and records.to_json leave each answer's status out); {ARGILLA_WITH_STATUS}",
                    file=str(file), field=unknown[0][3])
            checked = [(v, u, st or inferred, w) for v, u, st, w in checked]
        for value, user, status, where in checked:
            if status == "draft":
                out.append((i, pid, None, shown, user))
                continue
            if status == "discarded":
                value = "skip"
            elif value is None:
                raise DataError(f"record {i}: a submitted answer without a value", file=str(file),
                                field=where + ".value")
            out.append((i, pid, value, shown, user))
    return out


def _is_json_min(task: dict) -> bool:
    """A JSON_MIN row: the task's data flattened in, plus `annotator` / `annotation_id`, no `data`."""
    return "data" not in task and "pair_id" in task and ("annotator" in task or "annotation_id" in task)


def _labelstudio_answers(tasks: list, file: Path) -> list[tuple[int, str, str, dict, str | None]]:
    """Answers as for Argilla, from Label Studio's JSON export or its JSON_MIN rows."""
    out = []
    emails = {}  # user id -> email, from every expanded completed_by in the file
    for task in tasks:
        for ann in (task.get("annotations") if isinstance(task, dict) else None) or []:
            user = ann.get("completed_by") if isinstance(ann, dict) else None
            if isinstance(user, dict) and user.get("id") is not None and isinstance(user.get("email"), str):
                emails[str(user["id"])] = user["email"]

    def name(user) -> str | None:
        if isinstance(user, dict):  # completed_by expanded to the user
            user = user.get("email") or user.get("id")
        return None if user is None else emails.get(str(user), str(user))

    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise DataError(f"record {i}: expected a task object", file=str(file), field=f"[{i}]")
        if _is_json_min(task):
            pid = task.get("pair_id")
            if not isinstance(pid, str):
                raise DataError(f"record {i}: no pair id", file=str(file), field=f"[{i}].pair_id")
            choice = task.get(QUESTION)
            if choice is None:
                continue  # a task nobody annotated (or only other controls)
            if not (isinstance(choice, str) and choice in LS_CHOICES):
                raise DataError(f"record {i}: {choice!r} is not exactly one of {', '.join(LS_CHOICES)}",
                                file=str(file), field=f"[{i}].{QUESTION}")
            shown = {"response1": task.get("answer1"), "response2": task.get("answer2")}
            out.append((i, pid, LS_CHOICES[choice], shown, name(task.get("annotator"))))
            continue
        if "data" not in task:
            raise DataError(f"record {i}: neither a task of Label Studio's JSON export (no 'data') nor a JSON_MIN "
                            "row (no 'pair_id' and 'annotator'): export the project with Export -> JSON",
                            file=str(file), field=f"[{i}].data")
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
            user = name(ann.get("completed_by"))
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
    Returns counts: {ref, answers, written, unchanged, by_decision, annotators, not_submitted} (Argilla
    drafts and unsubmitted answers, left out)."""
    from prefdata.store import load_table, resolve

    if fmt not in FORMATS:
        raise PrefdataError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
    check_annotator(annotator)
    version = _pair_version(resolve(ref))
    file, recs = _load(Path(path), fmt)
    answers = (_argilla_answers if fmt == "argilla" else _labelstudio_answers)(recs, file)
    table = load_table(str(version.path))
    known = {q["pair_id"]: q for q in _queue(version, table, None)}
    users = {a[4] for a in answers if a[4] is not None and a[2] is not None}
    rows, left_out = [], 0
    for i, pid, label, shown, user in answers:
        q = known.get(pid)
        if q is None:
            raise DataError(f"record {i}: pair '{pid}' is not in {version.ref}", file=str(file), field=f"[{i}].id")
        for side, want in (("response1", q["answer1"]), ("response2", q["answer2"])):
            if shown[side] is not None and shown[side] != want:
                name = side if fmt == "argilla" else "answer" + side[-1]
                raise DataError(f"record {i}: the text differs from pair '{pid}' in {version.ref} (exported from "
                                "another version, or edited)", file=str(file),
                                field=f"[{i}].{_text_field(fmt, recs[i], name)}")
        if label is None:  # not submitted: checked, never a decision
            left_out += 1
            continue
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
            "by_decision": dict(sorted(by.items())), "annotators": sorted({r[1] for r in rows}),
            "not_submitted": left_out}


def _text_field(fmt: str, rec, name: str) -> str:
    """Where a shown text sits in the tool's record: fields.X / data.X, or X itself in a flat row."""
    if fmt == "argilla":
        return f"fields.{name}" if isinstance(rec, dict) and "fields" in rec else name
    return f"data.{name}" if isinstance(rec, dict) and "data" in rec else name
