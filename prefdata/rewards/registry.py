"""The voter registry: one record per voter type (its config class, the function that votes, whether
it needs an engine). A voter module calls `register_voter` beside its config; `clean_labels` validates
each `voters:` entry by looking its `type:` up here, at validation time, so a voter registered in any
imported module is usable from YAML without editing a union (CONTRIBUTING.md, "Adding a voter").

A leaf of the rewards package: pydantic and errors only, so every voter module can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, SerializeAsAny

from prefdata.errors import ConfigError


@dataclass
class VoteContext:
    """What a voter may use besides the pairs and its own config."""

    seed: int = 0
    progress: bool = True
    source: str = "clean_labels"
    engine_for: Callable | None = None  # EngineOverrides -> engine (judges); None outside a pipeline
    juries: list | None = None  # receives each jury voter's per-juror verdicts, for the card


@dataclass(frozen=True)
class VoterRecord:
    spec: type[BaseModel]
    vote: Callable  # (table, spec, VoteContext) -> {voter name: (n,) scores}
    needs_engine: bool = False


VOTERS: dict[str, VoterRecord] = {}


def register_voter(spec: type[BaseModel], vote: Callable, *, needs_engine: bool = False) -> None:
    """Make `type: <spec's type default>` a voter: `spec` validates its YAML, `vote` computes its votes."""
    VOTERS[spec.model_fields["type"].default] = VoterRecord(spec, vote, needs_engine)


def vote_with(spec: BaseModel, table, ctx: VoteContext) -> dict:
    rec = VOTERS[spec.type]
    if rec.needs_engine and ctx.engine_for is None:
        raise ConfigError(f"a {spec.type} voter needs an engine (run it inside a pipeline or pass engine_for)")
    return rec.vote(table, spec, ctx)


def _validate(value: Any) -> BaseModel:
    """A `voters:` entry -> its registered config. A nested error keeps its path (voters.0.model)."""
    if isinstance(value, BaseModel) and type(value) in {r.spec for r in VOTERS.values()}:
        return value
    if not isinstance(value, dict) or "type" not in value:
        raise ValueError(f"a voter is a mapping with a `type:` key, one of: {', '.join(VOTERS)}")
    rec = VOTERS.get(value["type"])
    if rec is None:
        raise ValueError(f"unknown voter type {value['type']!r}; registered: {', '.join(VOTERS)}")
    return rec.spec.model_validate(value)


# A voter config, whichever registered type it is; dumped with its own fields (lineage, fingerprints).
VoterSpec = Annotated[SerializeAsAny[BaseModel], BeforeValidator(_validate)]
