"""`prefdata review commit REF`: the human decisions applied as a new version of the dataset.

Per pair the humans' plurality wins: keep, flip (chosen and rejected swap, votes negate, via the
curation policies' own `flip`), tie (label_prob 0.5) or drop. A split plurality (1 keep, 1 flip) is
a tie: people disagreeing is the definition of an uncertain label.

The humans count as one voter family with an assumed per-label accuracy (`human_accuracy`, 0.8 by
default, about what crowd preference labels reach): after k labels for the result and m against,
label_prob = 1 / (1 + ((1 - acc) / acc) ** (k - m)). The automatic posterior is kept beside it in
`auto_label_prob` (oriented like the new label), so nothing the vote knew is lost.

The decisions log is committed first as its own version (`<name>-review-decisions`), and the new
version names it and the reviewed version in its lineage.
"""

from __future__ import annotations

import datetime as _dt

import polars as pl
import pyarrow as pa

from prefdata.errors import PrefdataError
from prefdata.review.agreement import annotator_agreement
from prefdata.review.db import LABELS, ReviewDB, db_path


def resolve(live: list[dict]) -> pl.DataFrame:
    """One row per pair with a human label: pair_id, human_decision, n (labels), k (for the result),
    m (against it, on the keep/flip axis)."""
    df = pl.DataFrame(live, schema={"pair_id": pl.String, "annotator": pl.String, "decision": pl.String},
                      orient="row") if live else pl.DataFrame(schema={"pair_id": pl.String, "decision": pl.String})
    df = df.select("pair_id", "decision").filter(pl.col("decision") != "skip")
    if df.is_empty():
        return pl.DataFrame(schema={"pair_id": pl.String, "human_decision": pl.String, "n": pl.Int64,
                                    "k": pl.Int64, "m": pl.Int64})
    c = df.group_by("pair_id", "decision").len()
    top = c.group_by("pair_id").agg(
        pl.col("len").sum().alias("n"),
        pl.col("decision").filter(pl.col("len") == pl.col("len").max()).alias("winners"),
        (pl.col("len") * (pl.col("decision") == "keep")).sum().alias("keeps"),
        (pl.col("len") * (pl.col("decision") == "flip")).sum().alias("flips"))
    final = pl.when(pl.col("winners").list.len() == 1).then(pl.col("winners").list.first()).otherwise(pl.lit("tie"))
    out = top.with_columns(final.alias("human_decision"))
    is_keep = pl.col("human_decision") == "keep"
    return out.select("pair_id", "human_decision", pl.col("n").cast(pl.Int64),
                      pl.when(is_keep).then("keeps").otherwise("flips").cast(pl.Int64).alias("k"),
                      pl.when(is_keep).then("flips").otherwise("keeps").cast(pl.Int64).alias("m"))


def apply_decisions(table: pa.Table, resolved: pl.DataFrame, human_accuracy: float = 0.8) -> pa.Table:
    """The reviewed table with every human decision applied (see the module docstring)."""
    from prefdata.curation.policies import flip
    from prefdata.schema import conform

    if not 0.5 < human_accuracy < 1.0:
        raise PrefdataError(f"human_accuracy must be in (0.5, 1), got {human_accuracy}")
    df = pl.from_arrow(table).with_row_index("_row")
    df = df.join(resolved.rename({"pair_id": "id"}), on="id", how="left").sort("_row")
    df = df.filter(pl.col("human_decision").fill_null("") != "drop")
    df = flip(df, pl.col("human_decision") == "flip")  # label_prob becomes 1 - p: the vote's, oriented anew
    odds = (1.0 - human_accuracy) / human_accuracy
    human_p = 1.0 / (1.0 + odds ** (pl.col("k") - pl.col("m")).cast(pl.Float64))
    decided = pl.col("human_decision").is_not_null()
    df = df.with_columns(
        pl.when(decided).then(pl.col("label_prob")).otherwise(None).alias("auto_label_prob"),
        pl.when(pl.col("human_decision") == "tie").then(pl.lit(0.5))
          .when(decided).then(human_p).otherwise(pl.col("label_prob")).alias("label_prob"),
        pl.col("n").alias("human_labels"))
    return conform(df.drop("_row", "n", "k", "m").to_arrow(), "pair")


def decisions_table(log: list[dict], reviewed_ref: str) -> pa.Table:
    when = [_dt.datetime.fromtimestamp(r["at"], _dt.UTC).isoformat(timespec="seconds") for r in log]
    return pa.table({
        "seq": pa.array([r["seq"] for r in log], pa.int64()),
        "pair_id": pa.array([r["pair_id"] for r in log], pa.string()),
        "annotator": pa.array([r["annotator"] for r in log], pa.string()),
        "decision": pa.array([r["decision"] for r in log], pa.string()),
        "key": pa.array([r["key"] for r in log], pa.string()),
        "swapped": pa.array([bool(r["swapped"]) for r in log], pa.bool_()),
        "undone": pa.array([bool(r["undone"]) for r in log], pa.bool_()),
        "at": pa.array(when, pa.string()),
        "reviewed": pa.array([reviewed_ref] * len(log), pa.string()),
    })


def vote_agreement(table: pa.Table, resolved: pl.DataFrame) -> dict:
    """How often the automatic vote (label_prob >= 0.5 keeps the stored label) agreed with the
    humans, on the pairs they gave a direction to (keep or flip)."""
    if "label_prob" not in table.column_names:
        return {"pairs": 0, "agreement": None}
    auto = pl.from_arrow(table.select(["id", "label_prob"])).unique("id", keep="first").rename({"id": "pair_id"})
    j = resolved.filter(pl.col("human_decision").is_in(["keep", "flip"])).join(auto, on="pair_id", how="inner")
    if j.is_empty():
        return {"pairs": 0, "agreement": None}
    same = (j["label_prob"].fill_null(1.0) >= 0.5) == (j["human_decision"] == "keep")
    return {"pairs": j.height, "agreement": round(float(same.mean()), 4)}


def summarise(live: list[dict], resolved: pl.DataFrame, table: pa.Table) -> dict:
    labels = [d for d in live if d["decision"] in LABELS]
    counts = resolved["human_decision"].value_counts()
    by = dict(zip(counts["human_decision"].to_list(), counts["count"].to_list()))
    per = {}
    for d in live:
        per[d["annotator"]] = per.get(d["annotator"], 0) + 1
    return {
        "reviewed_pairs": resolved.height,
        "labels_changed": int(by.get("flip", 0)),
        "kept": int(by.get("keep", 0)), "ties": int(by.get("tie", 0)), "dropped": int(by.get("drop", 0)),
        "skipped_only": len({d["pair_id"] for d in live} - set(resolved["pair_id"].to_list())),
        "decisions_by_annotator": dict(sorted(per.items())),
        "annotator_agreement": annotator_agreement([d["pair_id"] for d in labels], [d["annotator"] for d in labels],
                                                   [d["decision"] for d in labels], LABELS),
        "vote_vs_humans": vote_agreement(table, resolved),
    }


def card_section(s: dict, parent: str, decisions: str, acc: float) -> tuple[str, str]:
    aa, vv = s["annotator_agreement"], s["vote_vs_humans"]
    if aa["method"] and aa["pairs"]:
        kappa = "undefined (one category only)" if aa["kappa"] is None else f"{aa['kappa']:.3f}"
        agree = (f"{aa['method']} {kappa} over {aa['pairs']} pairs labelled by two or more "
                 f"(raw agreement {aa['raw_agreement']:.3f}); annotators: {', '.join(aa['annotators'])}")
    else:
        agree = "not measured: no pair was labelled by two annotators (raise `--overlap`)"
    vote = (f"{vv['agreement']:.3f} on {vv['pairs']} pairs (label_prob >= 0.5 read as 'keep the stored label')"
            if vv["pairs"] else "no pair with a human keep/flip")
    per = ", ".join(f"{a}: {n}" for a, n in s["decisions_by_annotator"].items())
    text = "\n".join([
        f"Human decisions on `{parent}`, log committed as `{decisions}`.", "",
        "| | pairs |", "|---|---|",
        f"| reviewed (labelled by someone) | {s['reviewed_pairs']} |",
        f"| labels changed (flipped) | {s['labels_changed']} |",
        f"| kept | {s['kept']} |", f"| ties (label_prob 0.5) | {s['ties']} |",
        f"| dropped | {s['dropped']} |", f"| skipped by everyone who saw them | {s['skipped_only']} |", "",
        f"- decisions per annotator: {per}",
        f"- annotator agreement: {agree}",
        f"- automatic vote agreed with the humans: {vote}",
        (f"- label_prob of a reviewed pair: humans as one family, per-label accuracy {acc}; the vote's own "
        "value is kept in `auto_label_prob`."),
    ])
    return "Human review", text


def commit_review(ref: str, *, name: str | None = None, human_accuracy: float = 0.8, command: str | None = None):
    """Commit the decisions on `ref` as a new version; returns (new version, decisions version, summary)."""
    from prefdata.store import load_table
    from prefdata.store import resolve as resolve_ref

    parent = resolve_ref(ref)
    path = db_path(parent)
    if not path.is_file():
        raise PrefdataError(f"no review of {parent.ref} found (looked for {path}); start one with "
                            f"`prefdata review {parent.ref}`. Note that `@latest` moves once a review is committed.")
    db = ReviewDB(path)
    try:
        live, log = db.live(), db.log()
    finally:
        db.close()
    if not live:
        raise PrefdataError(f"the review of {parent.ref} holds no decisions yet")
    table = load_table(str(parent.path))
    resolved = resolve(live)
    # Everything that can fail on the data fails here, before anything is written.
    new = apply_decisions(table, resolved, human_accuracy)
    summary = summarise(live, resolved, table)
    from prefdata import interrupts

    with interrupts.deferred():  # the log and the version it feeds are written together or not at all
        return _commit_both(parent, new, summary, log, name or parent.name, human_accuracy, command)


def _commit_both(parent, new, summary, log, out_name, human_accuracy, command):
    from prefdata.store import commit

    decisions = commit(f"{out_name}-review-decisions", decisions_table(log, parent.ref), kind="review_decisions",
                       lineage={"parents": [parent.ref], "description": f"Human review decisions on {parent.ref}."},
                       command=command)
    plin = parent.manifest.get("lineage") or {}
    lineage = {"parents": [parent.ref, decisions.ref],
               "review": {"reviewed": parent.ref, "decisions": decisions.ref, "human_accuracy": human_accuracy,
                          **summary},
               "description": f"`{parent.ref}` with human review decisions applied.",
               # Carried so a second review round still names the voter families.
               **{k: plin[k] for k in ("voters", "posterior") if k in plin}}
    version = commit(out_name, new, kind="pair", lineage=lineage, command=command,
                     card_sections=[card_section(summary, parent.ref, decisions.ref, human_accuracy)])
    return version, decisions, summary
