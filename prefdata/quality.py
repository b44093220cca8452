"""The quality verdict at the top of every generator card: what the rows are worth, measured from them.

Seven checks, each a count with a plain-words reading, and a threshold (`Thresholds`, the one
place they are set) that turns it into a warning:

- truncation: answers that stopped at max_tokens (finish_reason "length"), where the step records
  finish reasons; otherwise the card says it is unknown;
- parse failures: model outputs the step had to parse (judge verdicts, tagged edits) that it could not;
- judge self-agreement: how often repeated judgements of the same item agree (self_reward's k
  judgements of one answer; a pairwise judge's two orders of one pair);
- identical pairs: chosen equal to rejected, or near-identical (token Jaccard >= `near_identical`);
- meta-text and refusal markers (`META_TEXT`, `REFUSALS`) in chosen vs rejected;
- length skew: the mean log length ratio chosen/rejected (words) and the share where chosen is longer;
- uncertain labels: pairs whose label_prob lies in `uncertain_band`, or is null (a judged tie).

`measure(...)` returns integer counts only, so the pipeline's per-shard reports add up to the whole
step's; `checks`, `headline`, `section` and `run_line` read those counts. A generator step calls
`measure` on its rows, passes the counts to `generator_card(quality=...)` (the card's first section),
stores them as `report["quality"]` and sets `lineage["description"]` to `headline(counts)`, the first
line under the card's title. The pipeline repeats the warnings on the step's `✓` line.

It imports nothing from prefdata but the pairwise judge's verdict parser, and that only when used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# -------------------------------------------------------------------------- thresholds, in one place


@dataclass(frozen=True)
class Thresholds:
    """When a measured rate becomes a warning. A share is a fraction of the rows (or answers, or
    outputs) the check looked at; "above" is strict."""

    truncated: float = 0.10  # warn above 10% of answers stopped at max_tokens
    unparsed: float = 0.10  # warn above 10% of parsed outputs (judge verdicts, edits) unparseable
    agreement: float = 0.60  # warn below 60% exact agreement between repeated judgements
    identical: float = 0.05  # warn above 5% of pairs identical or near-identical
    near_identical: float = 0.90  # token Jaccard (lower-cased words) at or above this is near-identical
    meta_text: float = 0.05  # warn above 5% of either side's answers carrying meta-text
    refusal_gap: float = 0.20  # warn when refusal shares of chosen and rejected differ by more than 20 points
    length_ratio: float = 1.5  # warn when the geometric-mean length ratio is above 1.5x (or below 1/1.5)
    longer_share: float = 0.80  # warn when chosen is longer (or shorter) in more than 80% of pairs
    length_min_rows: int = 5  # below this many pairs length skew is reported, never warned (chance alone)
    rewrite_ratio: float = 3.0  # BPO: warn when optimized prompts average above 3x the original's length
    uncertain_low: float = 0.35  # label_prob in [uncertain_low, uncertain_high] (or null) is uncertain
    uncertain_high: float = 0.65
    uncertain: float = 0.20  # warn above 20% of labels uncertain


THRESHOLDS = Thresholds()

# Editor meta-text: words about the text instead of the text (a rewrite announcing itself, leftover
# template tags). A reward model learns such an artifact at once.
META_TEXT = (
    (r"here(?: is|'s) (?:a|an|the|my|your) (?:re-?written|revised|improved|edited|updated|modified|better|worse|"
     r"new|optimized|corrected) (?:version|response|reply|answer|draft|text|prompt)"),
    r"\b(?:re-?written|revised|edited|improved|modified) (?:version|response|reply)\b",
    r"\bthe (?:original|draft) (?:response|reply|answer)\b",
    r"</?(?:response|aspects|comparison|optimized)>",
    r"\[/?INST\]|<\|im_(?:start|end)\|>",
)
# Refusals and AI disclaimers. Present on one side much more than the other, they let a reward model
# learn "refuses" (or "never refuses") instead of the content.
REFUSALS = (
    r"\bas an ai\b", r"\bas a(?:n ai)? language model\b", r"\bi (?:cannot|can ?not|can't|can’t|won't|will not)\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? but\b", r"\bi(?:'m| am) (?:unable|not able) to\b",
)
_META = re.compile("|".join(META_TEXT), re.IGNORECASE)
_REFUSAL = re.compile("|".join(REFUSALS), re.IGNORECASE)
_WORD = re.compile(r"\w+")

# What the two texts of a row are, per kind of rows.
KINDS = {
    "pair": ("chosen", "rejected", "pairs"),
    "rewrite": ("optimized prompt", "original prompt", "prompts"),  # BPO construct / rewrite rows
    "answers": ("answer to the optimized prompt", "answer to the original", "prompts"),  # BPO evaluation
    "sft": ("completion", None, "rows"),
}


# -------------------------------------------------------------------------- measuring


def token_jaccard(a: str, b: str) -> float:
    """|A ∩ B| / |A ∪ B| over the lower-cased word sets; 1.0 for two texts without words."""
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return len(x & y) / len(x | y) if x or y else 1.0


def words(text: str) -> int:
    return len(text.split())


def has_meta_text(text: str) -> bool:
    return _META.search(text) is not None


def has_refusal(text: str) -> bool:
    return _REFUSAL.search(text) is not None


def agreement_counts(groups: Sequence[Sequence]) -> tuple[int, int]:
    """(pairs of repeated judgements, pairs that agree exactly) over each group's non-null values."""
    total = same = 0
    for g in groups:
        v = [x for x in g if x is not None]
        for i in range(len(v)):
            for j in range(i + 1, len(v)):
                total += 1
                same += v[i] == v[j]
    return total, same


def pairwise_judgements(raw_ab: Sequence[str | None], raw_ba: Sequence[str | None]) -> dict:
    """From a position-swapped pairwise judge's raw texts (x shown as A, then as B): the `parse`
    and `repeated` arguments of `measure`. An order's verdict is read as which text it prefers, so
    two orders agree when they prefer the same text (or both say tie)."""
    from prefdata.judges.pairwise import parse_winner

    first = [parse_winner(t or "") for t in raw_ab]
    second = [parse_winner(t or "") for t in raw_ba]
    as_x = {"a": "x", "b": "y", "tie": "tie"}
    as_y = {"a": "y", "b": "x", "tie": "tie"}
    letters = first + second
    return {"parse": (len(letters), sum(v is None for v in letters)),
            "repeated": [[None if f is None else as_x[f], None if s is None else as_y[s]] for f, s in zip(first, second)]}


def measure(first: Sequence[str], second: Sequence[str] | None = None, *, kind: str = "pair",
            finish: Sequence[str | None] | None = None, label_prob: Sequence[float | None] | None = None,
            parse: tuple[int, int] | None = None, parse_what: str = "judge verdicts",
            repeated: Sequence[Sequence] | None = None, thresholds: Thresholds = THRESHOLDS) -> dict:
    """Integer counts of every check over the rows (see the module docstring).

    first/second: the two texts of each row (chosen/rejected; second None for single-answer rows);
    finish: the finish reason of every answer behind the rows (None where not recorded; the whole
    argument None when the step records none); label_prob: per row, None for a tie (omit when the
    rows carry no label); parse: (outputs parsed, outputs that could not be); repeated: per judged
    item, its repeated judgements (None = unparseable)."""
    if kind not in KINDS:
        raise ValueError(f"unknown quality kind '{kind}' (known: {', '.join(KINDS)})")
    n = len(first)
    out: dict = {"kind": kind, "rows": n}
    fins = list(finish) if finish is not None else []
    out["answers"] = len(fins) if finish is not None else n * (1 if second is None else 2)
    out["finish_known"] = sum(f is not None for f in fins)
    out["truncated"] = sum(f == "length" for f in fins)
    if parse is not None:
        out["parsed_outputs"], out["unparsed"] = int(parse[0]), int(parse[1])
        out["parse_what"] = parse_what
    if repeated is not None:
        out["repeat_pairs"], out["repeat_agree"] = agreement_counts(repeated)
    out["meta_first"] = sum(has_meta_text(t) for t in first)
    out["refusal_first"] = sum(has_refusal(t) for t in first)
    if second is not None:
        identical = near = first_longer = second_longer = 0
        log_sum = 0.0
        for a, b in zip(first, second):
            if a.strip() == b.strip():
                identical += 1
            elif token_jaccard(a, b) >= thresholds.near_identical:
                near += 1
            wa, wb = max(words(a), 1), max(words(b), 1)
            first_longer += wa > wb
            second_longer += wb > wa
            log_sum += math.log(wa / wb)
        out.update({"identical": identical, "near_identical": near,
                    "meta_second": sum(has_meta_text(t) for t in second),
                    "refusal_second": sum(has_refusal(t) for t in second),
                    "first_longer": first_longer, "second_longer": second_longer,
                    # Summed in thousandths: integers add up exactly across a streamed step's shards.
                    "log_ratio_milli": round(1000 * log_sum)})
    if label_prob is not None:
        lo, hi = thresholds.uncertain_low, thresholds.uncertain_high
        out["labels"] = len(label_prob)
        out["uncertain"] = sum(p is None or (isinstance(p, float) and math.isnan(p)) or lo <= p <= hi
                               for p in label_prob)
    return out


# -------------------------------------------------------------------------- reading


@dataclass
class Check:
    name: str
    measured: str  # the number, e.g. "8 of 10 answers (80%)"
    reading: str  # what it means, in plain words
    warning: str | None = None  # the short form for the headline, when it is a warning


def _pct(k: int, n: int) -> str:
    return f"{k} of {n} ({k / n:.0%})" if n else "0 of 0"


def checks(q: dict, t: Thresholds = THRESHOLDS) -> list[Check]:
    """The seven checks of a `measure` result, in card order."""
    first, second, unit = KINDS.get(q.get("kind", "pair"), KINDS["pair"])
    n = q.get("rows", 0)
    return [check(q, t, first, second, unit, n) for check in _CHECKS]


def _truncation(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Truncation."""
    answers, known, cut = q.get("answers", 0), q.get("finish_known", 0), q.get("truncated", 0)
    if not known:
        return Check("truncation", "unknown", "this step does not record why generation stopped, so answers "
                     "cut off at max_tokens cannot be counted" if answers else "no answers")
    else:
        share = cut / known
        tail = "" if known == answers else f" ({answers - known} answers not recorded)"
        warn = share > t.truncated
        return Check("truncation", f"{_pct(cut, known)} answers{tail}",
                     ("most answers stopped at max_tokens: they end mid-sentence; raise max_tokens"
                      if share > 0.5 else "some answers stopped at max_tokens and end mid-sentence; "
                      "raise max_tokens" if warn else "answers ended on their own" if not cut else
                      "a few answers stopped at max_tokens"),
                     f"{share:.0%} of answers cut off at max_tokens" if warn else None)


def _parse_failures(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Parse failures."""
    if "parsed_outputs" in q:
        total, bad, what = q["parsed_outputs"], q["unparsed"], q.get("parse_what", "judge verdicts")
        share = bad / total if total else 0.0
        warn = share > t.unparsed
        return Check("parse failures", f"{_pct(bad, total)} {what}",
                     (f"{share:.0%} of {what} could not be parsed and were thrown away"
                      + ("; the model does not keep the format it was asked for" if warn else "") if bad else
                      f"every one of the {what} could be parsed" if total else f"no {what} were made"),
                     f"{share:.0%} of {what} unparseable" if warn else None)
    else:
        return Check("parse failures", "n/a", "this step parses no model output")


def _self_agreement(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Judge self-agreement."""
    if q.get("repeat_pairs"):
        pairs, agree = q["repeat_pairs"], q["repeat_agree"]
        rate = agree / pairs
        warn = rate < t.agreement
        return Check("judge self-agreement", f"{rate:.0%} of {pairs} pairs of judgements of the same item agree",
                     ("the judge often contradicts itself on the same item (judged again, or shown in the "
                      "other order): its labels are close to noise" if warn else
                      "repeated judgements of the same item mostly agree"),
                     f"judge agrees with itself only {rate:.0%} of the time" if warn else None)
    else:
        return Check("judge self-agreement", "n/a", "no item was judged twice" if "repeat_pairs" in q
                     else "this step does not judge an item more than once")


def _identical(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Identical / near-identical."""
    if "identical" in q:
        same, near = q["identical"], q["near_identical"]
        share = (same + near) / n if n else 0.0
        warn = share > t.identical
        return Check("identical pairs", f"{same} identical, {near} near-identical of {n} {unit}",
                     (f"{share:.0%} of {unit} have (nearly) the same {first} and {second} "
                      f"(token Jaccard >= {t.near_identical:g}): there is nothing to tell apart"
                      if same + near else f"every {first} differs from its {second}"),
                     f"{same + near} of {n} {unit} identical or near-identical" if warn else None)
    else:
        return Check("identical pairs", "n/a", "rows have a single answer")


def _meta_text(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Meta-text and refusal markers."""
    mf, rf = q.get("meta_first", 0), q.get("refusal_first", 0)
    if "meta_second" in q:
        ms, rs = q["meta_second"], q["refusal_second"]
        meta_warn = n and max(mf, ms) / n > t.meta_text
        gap = abs(rf - rs) / n if n else 0.0
        refusal_warn = q.get("kind") == "pair" and gap > t.refusal_gap
        parts = []
        if meta_warn:
            parts.append(f"meta-text in {mf / n:.0%} of {first} and {ms / n:.0%} of {second}")
        if refusal_warn:
            parts.append(f"refusals in {rf / n:.0%} of {first} vs {rs / n:.0%} of {second}")
        reading = ("editor meta-text or template tags leak into the answers, an artifact a reward model learns at "
                   "once" if meta_warn else "no meta-text found" if not (mf or ms) else "a little meta-text")
        reading += ("; refusals mark one side, so a model can learn to refuse (or never refuse) instead of "
                    "the content" if refusal_warn else "")
        return Check("meta-text and refusals", f"meta-text: {first} {mf}, {second} {ms}; refusals: "
                     f"{first} {rf}, {second} {rs} (of {n})", reading, "; ".join(parts) or None)
    else:
        meta_warn = n and mf / n > t.meta_text
        return Check("meta-text and refusals", f"meta-text {mf}, refusals {rf} of {n} {unit}",
                     "editor meta-text or template tags leak into the answers" if meta_warn else
                     "no meta-text found" if not mf else "a little meta-text",
                     f"meta-text in {mf / n:.0%} of {unit}" if meta_warn else None)


def _length_skew(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Length skew."""
    if "log_ratio_milli" in q and n:
        ratio = math.exp(q["log_ratio_milli"] / 1000 / n)
        longer = q["first_longer"] / n
        shorter = q["second_longer"] / n
        measured = f"{first} / {second} = {ratio:.2f}x (geometric mean, words); {first} longer in {longer:.0%}"
        kind = q.get("kind")
        if kind == "pair":
            skewed = ratio > t.length_ratio or ratio < 1 / t.length_ratio or max(longer, shorter) > t.longer_share
            warn = skewed and n >= t.length_min_rows
            reading = (f"{first} is {'longer' if ratio >= 1 else 'shorter'} than {second} so often that a reward "
                       f"model can learn length instead of quality" if skewed else "no strong length skew")
            if skewed and not warn:
                reading += f" (only {n} pairs: not warned)"
            short = (f"chosen {'longer' if ratio >= 1 else 'shorter'} ({ratio:.2f}x, longer in {longer:.0%})"
                     if warn else None)
        elif kind == "rewrite":
            warn = ratio > t.rewrite_ratio
            reading = ("optimized prompts are many times the original's length: many may be answers, not prompts"
                       if warn else "optimized prompts stay near the original's length")
            short = f"optimized prompts {ratio:.1f}x the original's length" if warn else None
        else:
            reading, short = "reported, not warned", None
        return Check("length skew", measured, reading, short)
    else:
        return Check("length skew", "n/a", "no pairs to compare" if "identical" in q else
                     "rows have a single answer")


def _uncertain(q: dict, t: Thresholds, first: str, second: str, unit: str, n: int) -> Check:
    """Uncertain labels."""
    if "labels" in q:
        total, unsure = q["labels"], q["uncertain"]
        share = unsure / total if total else 0.0
        warn = share > t.uncertain
        what = "verdicts" if q.get("kind") == "answers" else "labels"
        return Check("uncertain labels", f"{_pct(unsure, total)} {what}",
                     (f"{share:.0%} of {what} are ties or near a coin flip (label_prob "
                      f"{t.uncertain_low:g}-{t.uncertain_high:g}): they teach little" if unsure else
                      f"no {what[:-1]} is a tie or near a coin flip" if total else f"no {what}"),
                     f"{share:.0%} of {what} uncertain" if warn else None)
    else:
        return Check("uncertain labels", "n/a", "the rows carry no preference label")


_CHECKS = (_truncation, _parse_failures, _self_agreement, _identical, _meta_text, _length_skew, _uncertain)



def warnings(q: dict | None, t: Thresholds = THRESHOLDS) -> list[str]:
    return [c.warning for c in checks(q, t) if c.warning] if q else []


def headline(q: dict, t: Thresholds = THRESHOLDS) -> str:
    """The card's first line: "Quality: N warnings — a; b (n pairs checked)." or "Quality: no
    warnings (n pairs checked)."."""
    w = warnings(q, t)
    checked = f"({q.get('rows', 0)} {KINDS.get(q.get('kind'), KINDS['pair'])[2]} checked)"
    if not w:
        return f"Quality: no warnings {checked}."
    return f"Quality: {len(w)} warning{'s' if len(w) != 1 else ''} — " + "; ".join(w) + f" {checked}."


def section(q: dict, t: Thresholds = THRESHOLDS) -> tuple[str, str]:
    """("Quality verdict", markdown): every check with its number, reading and whether it warns."""
    rows = [f"| {'⚠ ' if c.warning else ''}{c.name} | {c.measured} | {c.reading} |" for c in checks(q, t)]
    return ("Quality verdict", "\n".join(["| check | measured | reading |", "|---|---|---|", *rows, "",
                                          ("⚠ marks a warning (summed up in the line under the title); "
                                           "thresholds: `prefdata/quality.py` (`Thresholds`).")]))


def run_line(report: dict | None) -> str:
    """What the pipeline appends to a step's ✓ line, the card's quality line: "" when the step
    measured nothing."""
    q = (report or {}).get("quality")
    if not isinstance(q, dict) or "rows" not in q:
        return ""
    return "; q" + headline(q)[1:]


def restate(description: str | None, report: dict | None) -> str | None:
    """`description` with its "Quality: …" line measured again from `report["quality"]` (a streamed
    step's counts summed over every shard, where the step itself saw one shard)."""
    q = (report or {}).get("quality")
    if not description or not isinstance(q, dict) or "rows" not in q:
        return description
    return "\n".join(headline(q) if line.startswith("Quality: ") else line for line in description.split("\n"))
