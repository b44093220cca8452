"""Honest failure for pipeline steps: count what a step asked of its engines and what failed.

Generators see a failed request as a missing row, so without this an outage committed an empty
version and exited 0. The pipeline wraps each engine a step uses in `Tally`, then `verdict` decides:

- every request failed, or the step would commit zero rows: the run fails, nothing is committed;
- some requests failed: the step commits only if the failed share is at most the step's
  `max_failure_rate` (default 0); the failures go in lineage (`failures`) and the card;
- a rerun of a version that recorded failures is not skipped by its fingerprint: it asks again for
  what failed (successes come from the request cache) and commits when more succeeded.

Counting happens on the completions themselves, so it holds for every backend (transformers,
vLLM, OpenAI, Ray) without each one reporting it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefdata.errors import PrefdataError
from prefdata.redact import redact

KEEP_ERRORS = 3  # distinct error texts kept for the message, lineage and card


@dataclass
class Counts:
    samples: int = 0  # completions the step received (cache hits included)
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # first distinct error texts, redacted

    def add(self, completions) -> None:
        for c in completions:
            self.samples += 1
            if getattr(c, "finish_reason", None) == "error":
                self.failed += 1
                text = redact(str(getattr(c, "error", None) or "unknown engine error"))
                if len(self.errors) < KEEP_ERRORS and text not in self.errors:
                    self.errors.append(text)

    @property
    def share(self) -> float:
        return self.failed / self.samples if self.samples else 0.0


class Tally:
    """An engine as seen by one step: same interface, every generated completion counted. With a
    `meter` (prefdata.costs.Meter), a call that could pass the run's budget sends only the requests
    that fit, then stops the run with the meter's one-line error."""

    def __init__(self, engine, counts: Counts, meter=None, step: str = ""):
        self._engine, self._counts, self._meter, self._step = engine, counts, meter, step

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests, params):
        fits, rest_usd, rest_tokens = (self._meter.admit(self._engine, requests, params) if self._meter is not None
                                       else (len(requests), 0.0, 0))
        out = self._engine.generate(requests[:fits] if fits < len(requests) else requests, params) if fits else []
        for comps in out:
            self._counts.add(comps)
        if fits < len(requests):  # what came back is in the request cache; the rest waits for a rerun
            raise self._meter.exceeded(self._step, len(requests) - fits, rest_usd, rest_tokens)
        return out


def verdict(step_name: str, counts: Counts, rows: int, input_rows: int, max_rate: float,
            drop_reasons: dict | None = None) -> None:
    """Raise the one-line error that fails the run, or return when the step may commit."""
    first = f"first error: {counts.errors[0]}" if counts.errors else "no error text"
    if counts.samples and counts.failed == counts.samples:
        raise PrefdataError(f"step '{step_name}': all {counts.samples} engine requests failed ({first}); "
                            "nothing committed, rerun to retry")
    if counts.failed and counts.share > max_rate:
        raise PrefdataError(
            f"step '{step_name}': {counts.failed} of {counts.samples} engine requests failed "
            f"({counts.share:.1%} > max_failure_rate {max_rate:g}; {first}); nothing committed, rerun to retry "
            f"the failures (the cache keeps the successes) or raise steps.{step_name}.max_failure_rate")
    if rows == 0:
        why = ""
        if drop_reasons:
            top = sorted(drop_reasons.items(), key=lambda kv: -kv[1])[:2]
            why = "; drop reasons: " + ", ".join(f"{k} ({v})" for k, v in top)
        if counts.failed:
            why += f"; {first}"
        raise PrefdataError(f"step '{step_name}' produced 0 rows from {input_rows} input rows{redact(why)}; "
                            "nothing committed")


def lineage_entry(counts: Counts, max_rate: float) -> dict:
    return {"requests": counts.samples, "failed": counts.failed, "share": round(counts.share, 4),
            "max_failure_rate": max_rate, "first_errors": list(counts.errors)}


def recorded_failures(version) -> int:
    """Failed requests a committed version recorded (0 for versions from before they were recorded)."""
    lineage = (getattr(version, "manifest", None) or {}).get("lineage") or {}
    return int((lineage.get("failures") or {}).get("failed") or 0)


def improved(counts: Counts, rows: int, previous) -> bool:
    """Whether a rerun did better than the version it retries: more rows, or fewer failures."""
    manifest = getattr(previous, "manifest", None) or {}
    splits = manifest.get("splits") if isinstance(manifest.get("splits"), dict) else {}
    before_rows = sum(int(s.get("rows") or 0) for s in splits.values() if isinstance(s, dict))
    return rows > before_rows or counts.failed < recorded_failures(previous)


def card_markdown(counts: Counts, max_rate: float) -> str:
    lines = [f"{counts.failed:,} of {counts.samples:,} engine requests failed ({counts.share:.1%}; the step allows "
             f"{max_rate:.1%}, `max_failure_rate`). Their rows are missing from this version; rerunning the pipeline "
             "retries them (successes come from the request cache) and commits a new version if more succeed."]
    if counts.errors:
        lines += ["", "First errors:", *[f"- `{e[:300]}`" for e in counts.errors]]
    return "\n".join(lines)
