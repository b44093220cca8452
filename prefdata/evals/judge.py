"""`prefdata eval judge`: how far can a judge (or a jury) be trusted on this data, and how is it biased?

Each juror sees every pair in both orders (`judges.jury`). x is the stored chosen answer, y the
stored rejected one, so "x wins" means the judge agrees with the label. Per juror, vectorised:

- position consistency: of the pairs parsed in both orders, the share where both orders name the
  same outcome (the same answer, or a tie both times): the verdicts that survive the swap (Zheng et
  al. 2023, arXiv 2306.05685). `first_position_rate` is the share of one-order decisive verdicts that
  pick whichever answer is shown first (0.5 is no position bias).
- tie rate: the share of pairs without a swap-consistent winner, split into explicit ties,
  order-dependent verdicts and unparseable outputs.
- accuracy against the labels: of the decisive verdicts, the share that pick the stored chosen;
  also over all pairs with a tie counted as one half.
- length bias: of the decisive verdicts on pairs of unequal length (characters of the final answer),
  the share where the longer answer wins, beside the base rate, the share of those same pairs where
  the label's chosen answer is the longer one. A judge that merely agreed with the labels would show
  the base rate; the excess is its length bias (Dubois et al. 2024; Singhal et al. 2023).
- self-preference: when the data records which model wrote each answer (columns or meta keys
  `chosen_model` / `rejected_model`; else the version's generating model for both), on the pairs
  where exactly one answer is the juror's own, the share of decisive verdicts that pick its own answer,
  beside how often the labels pick it (Panickssery et al. 2024, arXiv 2404.13076). When the juror
  wrote both answers (RLCD, self-rewarding) its preference for itself cannot be separated from
  quality; the report says so instead of giving a number.

The jury's majority gets the verdict-level figures too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from prefdata.judges.jury import JurorVerdicts, majority

_X, _Y, _TIE = 1.0, 0.0, 0.5


def _order_outcomes(first: list, second: list) -> tuple[np.ndarray, np.ndarray]:
    """Outcome for x in each order (1 x wins, 0 y wins, 0.5 tie, NaN unparsed)."""
    m1 = {"a": _X, "b": _Y, "tie": _TIE}
    m2 = {"b": _X, "a": _Y, "tie": _TIE}
    return (np.array([m1.get(v, np.nan) for v in first]), np.array([m2.get(v, np.nan) for v in second]))


def _rate(mask: np.ndarray, of: np.ndarray) -> float | None:
    n = int(of.sum())
    return None if n == 0 else round(float((mask & of).sum()) / n, 4)


def verdict_figures(v: np.ndarray, lx: np.ndarray, ly: np.ndarray) -> dict:
    """Tie rate, accuracy and length bias from swap-consistent verdicts (1, 0 or NaN for none)."""
    n = len(v)
    decided = ~np.isnan(v)
    x_wins = decided & (v == _X)
    unequal = lx != ly
    x_longer = lx > ly
    on = decided & unequal
    longer_wins = (x_wins == x_longer) & on
    acc_half = float(np.where(decided, v, _TIE).mean()) if n else None
    return {
        "pairs": n, "decided": int(decided.sum()),
        "tie_rate": None if n == 0 else round(1.0 - decided.mean(), 4),
        "accuracy": _rate(x_wins, decided),
        "accuracy_tie_half": None if acc_half is None else round(acc_half, 4),
        "length": {"pairs": int(on.sum()), "longer_wins": _rate(longer_wins, on),
                   "base_rate": _rate(x_longer & on, on),
                   "bias": (None if not on.any() else
                            round(float(longer_wins.sum() - (x_longer & on).sum()) / int(on.sum()), 4))},
    }


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]


def self_preference(v: np.ndarray, judge_model: str, chosen_model: list, rejected_model: list) -> dict:
    own_x = np.array([_same_model(judge_model, m) for m in chosen_model], dtype=bool)
    own_y = np.array([_same_model(judge_model, m) for m in rejected_model], dtype=bool)
    known = np.array([bool(a) and bool(b) for a, b in zip(chosen_model, rejected_model)], dtype=bool)
    if not known.any():
        return {"measured": False, "note": "the data does not record which model wrote the answers"}
    mixed = own_x ^ own_y
    if not mixed.any():
        note = ("the judge wrote both answers of every pair it could be measured on, so its preference for "
                "itself cannot be told from quality" if (own_x & own_y).any() else
                "the judge wrote none of the answers")
        return {"measured": False, "judge_wrote_both": int((own_x & own_y).sum()), "note": note}
    on = mixed & ~np.isnan(v)
    picks_own = on & (((v == _X) & own_x) | ((v == _Y) & own_y))
    label_own = on & own_x
    return {"measured": True, "pairs": int(on.sum()), "picks_own": _rate(picks_own, on),
            "labels_pick_own": _rate(label_own, on),
            "excess": None if not on.any() else round(float(picks_own.sum() - label_own.sum()) / int(on.sum()), 4)}


def juror_report(j: JurorVerdicts, lx: np.ndarray, ly: np.ndarray, chosen_model: list, rejected_model: list) -> dict:
    o1, o2 = _order_outcomes(j.first, j.second)
    both = ~np.isnan(o1) & ~np.isnan(o2)
    v = np.array([np.nan if x is None else x for x in j.verdict], dtype=float)
    # Position: in order 1 x is A, in order 2 x is B; "picks A" is o1 == x-wins or o2 == y-wins.
    dec1, dec2 = np.isin(o1, (_X, _Y)), np.isin(o2, (_X, _Y))
    picks_a = int((dec1 & (o1 == _X)).sum() + (dec2 & (o2 == _Y)).sum())
    n_dec = int(dec1.sum() + dec2.sum())
    ties = both & ((o1 == _TIE) | (o2 == _TIE)) & np.isnan(v)
    flips = both & (o1 != o2) & ~ties & np.isnan(v)
    rep = {"judge": j.name, "model": j.model_id,
           "position_consistency": _rate(both & (o1 == o2), both),
           "first_position_rate": None if n_dec == 0 else round(picks_a / n_dec, 4),
           **verdict_figures(v, lx, ly)}
    n = max(len(v), 1)
    rep["ties"] = {"explicit": round(ties.sum() / n, 4), "order_dependent": round(flips.sum() / n, 4),
                   "unparsed": round((~both).sum() / n, 4)}
    rep["self_preference"] = self_preference(v, j.model_id, chosen_model, rejected_model)
    return rep


def answer_models(table: pa.Table, generator: str | None) -> tuple[list, list]:
    """Per pair, the model that wrote the chosen and the rejected answer, where recorded."""
    n = table.num_rows
    cols = table.column_names
    cm = table.column("chosen_model").to_pylist() if "chosen_model" in cols else [None] * n
    rm = table.column("rejected_model").to_pylist() if "rejected_model" in cols else [None] * n
    if "meta" in cols and (None in cm or None in rm):
        for i, m in enumerate(table.column("meta").to_pylist()):
            try:
                d = json.loads(m) if isinstance(m, str) else (m or {})
            except ValueError:
                d = {}
            if isinstance(d, dict):
                cm[i] = cm[i] or d.get("chosen_model")
                rm[i] = rm[i] or d.get("rejected_model")
    return [c or generator for c in cm], [r or generator for r in rm]


def evaluate(verdicts: list[JurorVerdicts], table: pa.Table, generator: str | None = None) -> dict:
    """The report for jurors that judged `table`'s pairs with x = chosen, y = rejected."""
    from prefdata.judges.jury import judge_inputs

    _, chosen, rejected = judge_inputs(table)
    lx, ly = np.array([len(c) for c in chosen]), np.array([len(r) for r in rejected])  # characters
    cm, rm = answer_models(table, generator)
    report = {"pairs": table.num_rows, "generator": generator,
              "judges": [juror_report(j, lx, ly, cm, rm) for j in verdicts]}
    if len(verdicts) > 1:
        v = np.array([np.nan if x is None else x for x in majority(verdicts)], dtype=float)
        report["jury"] = {"judge": "jury (majority)", **verdict_figures(v, lx, ly)}
    return report


def run_judge_eval(table: pa.Table, jury, engine_for, generator: str | None = None, progress: bool = True) -> dict:
    from prefdata.judges.jury import judge_inputs, run_jury

    prompts, chosen, rejected = judge_inputs(table)
    verdicts = run_jury(jury, engine_for, prompts, chosen, rejected, progress=progress)
    report = evaluate(verdicts, table, generator)
    report["rows"] = [{"id": pid, "verdicts": [{"judge": j.name, "first": j.first[i], "second": j.second[i],
                                                "verdict": j.verdict[i], "raw": [j.raw_first[i], j.raw_second[i]]}
                                               for j in verdicts]}
                      for i, pid in enumerate(table.column("id").to_pylist())]
    return report


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _signed(v) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f} pt"


def format_report(r: dict) -> str:
    """The judge card: one row per juror (and the jury), then self-preference and the tie split."""
    rows = r["judges"] + ([r["jury"]] if "jury" in r else [])
    lines = [f"Judges on {r['pairs']} pairs, each shown both orders; x = the stored chosen answer.", "",
             ("| judge | position consistency | picks first shown | tie rate | accuracy (decided) | "
              "accuracy (tie = 1/2) | longer wins | base rate | length bias |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for j in rows:
        ln = j["length"]
        lines.append(f"| `{j['judge']}` | {_pct(j.get('position_consistency'))} | {_pct(j.get('first_position_rate'))} | "
                     f"{_pct(j['tie_rate'])} | {_pct(j['accuracy'])} | {_pct(j['accuracy_tie_half'])} | "
                     f"{_pct(ln['longer_wins'])} | {_pct(ln['base_rate'])} | {_signed(ln['bias'])} |")
    lines += ["", "Ties: explicit / order-dependent / unparsed, and self-preference:"]
    for j in r["judges"]:
        t, sp = j["ties"], j["self_preference"]
        own = (f"picks its own answer {_pct(sp['picks_own'])} vs labels {_pct(sp['labels_pick_own'])} "
               f"({_signed(sp['excess'])}) on {sp['pairs']} pairs" if sp["measured"] else f"not measured: {sp['note']}")
        lines.append(f"- `{j['judge']}`: {_pct(t['explicit'])} / {_pct(t['order_dependent'])} / "
                     f"{_pct(t['unparsed'])}; self-preference {own}")
    return "\n".join(lines)


def card_section(r: dict) -> tuple[str, str]:
    """The same figures as a card section (title, markdown), for a version voted on by a jury."""
    return "Judges and their biases", format_report(r)


# ----------------------------------------------------------------------------- CLI


def generator_of(source: str) -> str | None:
    """The generating model a store version records (lineage `model`), if the source is one."""
    from prefdata.errors import PrefdataError
    from prefdata.store import resolve

    try:
        if "@" in source or (Path(source) / "manifest.json").is_file():
            return (resolve(source).manifest.get("lineage") or {}).get("model")
    except PrefdataError:  # a bad ref: io.read reports it properly
        return None
    return None


def make_engine(overrides: dict):
    """The engine of one juror; tests replace this with scripted engines."""
    from prefdata.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(**overrides))


def judge_cmd(dataset: str = typer.Option(..., "--dataset", help="Labelled pairs: store ref or file."),
              judge: list[str] = typer.Option(..., "--judge", help="A judge: MODEL, BACKEND:MODEL (transformers, "
                                              "vllm, openai) or a jury YAML; repeat for a jury."),
              judge_method: str = typer.Option("generate", help="generate | logprob, for judges given as MODEL."),
              limit: int = typer.Option(None, help="First n pairs only."),
              out: Path = typer.Option(None, "--out", help="Also write the report, with every verdict, as JSON."),
              as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """Position consistency, length bias, tie rate, self-preference and accuracy against the labels
    of one judge or a jury, each judge shown both orders of every pair."""
    from prefdata import io
    from prefdata.errors import PrefdataError
    from prefdata.judges.jury import load_jury

    if judge_method not in ("generate", "logprob"):
        raise PrefdataError(f"--judge-method must be generate or logprob, got '{judge_method}'")
    if limit is not None and limit < 1:
        raise PrefdataError("--limit must be at least 1")
    jury = load_jury(judge, judge_method)  # engine blocks are checked here (EngineOverrides), before any model loads
    table = io.read(dataset, "pair")
    table = table.slice(0, limit) if limit else table
    report = run_judge_eval(table, jury, make_engine, generator=generator_of(dataset))
    report["dataset"] = dataset
    from prefdata.tables import dumps, print_json

    schema = "prefdata.eval.judge/1"
    if as_json:  # stdout: the figures; --out: the same document with every verdict
        print_json({"schema": schema, **{k: v for k, v in report.items() if k != "rows"}})
    else:
        typer.echo(format_report(report))
    if out:
        out.write_text(dumps({"schema": schema, **report}) + "\n", encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Mount `eval judge` into the `eval` group (made here when no one made it yet); once only."""
    group = next((g.typer_instance for g in app.registered_groups if g.name == "eval"), None)
    if group is None:
        group = typer.Typer(no_args_is_help=True)
        app.add_typer(group, name="eval", help="Measure data and model quality.")
    if not any(c.name == "judge" for c in group.registered_commands):
        group.command("judge")(judge_cmd)
