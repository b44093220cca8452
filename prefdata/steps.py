"""The step registry: what a pipeline step type is, and the decorator that declares one.

A leaf module on purpose. Generators, curation, trainers and evals import it to declare their
steps; the pipeline and the CLI import it to look them up. It imports no other prefdata module
(the registry would otherwise pull the pipeline into every generator, which is the cycle this
replaces). Which modules declare steps is listed once, in `prefdata.catalog`.

    @step("rlcd", config=RLCDConfig, input="prompt", output="pair")
    def run_step(cfg: RLCDConfig, table: pa.Table, ctx) -> StepResult: ...

Streaming: a dataset step runs on the whole input table unless it is declared row-wise
(`streaming=True`): then the pipeline hands it the input in shards of `shard_rows` rows, one call
per shard, and streams each shard's output into the version, so memory stays flat as the input
grows. A streaming step's output row must depend on its input row alone (seeds from the row id, not
its position). Steps that read prompts are row-wise generators and stream unless declared with
`streaming=False`; any other step (curation over the whole table, dedup, train, eval) gets its whole
input unless it declares `streaming=True`.

Output kinds: a dataset kind ("pair", "completion", "bpo", ...) is committed as a store version;
"model" and "eval" are directories (a trained model with its card; an evaluation report) that the
step writes under `ctx.artifact_dir` and the pipeline stamps with the step's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

ARTIFACT_KINDS = ("model", "eval")  # outputs that are directories, not store dataset versions


@dataclass
class StepResult:
    tables: dict[str, Any] = field(default_factory=dict)  # split -> pyarrow Table
    kind: str = "pair"
    card_sections: list[tuple[str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)  # templates, seeds, anything a step wants recorded
    report: dict = field(default_factory=dict)  # counts and drop reasons, shown in the run summary
    side_tables: dict[str, tuple[str, Any]] = field(default_factory=dict)  # name -> (kind, table)
    # For "model"/"eval" outputs: what the step wrote into ctx.artifact_dir (card path, metrics).
    card_path: str | None = None
    metrics: dict = field(default_factory=dict)


StepFn = Callable[[Any, Any, Any], StepResult]


@dataclass(frozen=True)
class StepType:
    name: str
    # A pydantic model (`extra="forbid"`, so unknown keys are errors), or a function returning one:
    # the trainers' configs live beside torch/TRL imports that cost seconds, paid only when used.
    config_source: Any
    run: StepFn
    input: str = "any"  # the record kind it reads ("prompt", "pair", ...); informative, shown in errors/docs
    output: str = "pair"  # a dataset kind, or one of ARTIFACT_KINDS
    doc: str = ""
    streaming: bool = False  # row-wise: may be run shard by shard (see the module docstring)

    @property
    def config(self) -> type:
        src = self.config_source
        return src if isinstance(src, type) else src()

    @property
    def artifact(self) -> bool:
        return self.output in ARTIFACT_KINDS


_REGISTRY: dict[str, StepType] = {}


def register_step(name: str, config: type, fn: StepFn, *, input: str = "any", output: str = "pair",
                  streaming: bool | None = None) -> StepType:
    """Declare a step type; a later declaration under the same name replaces the earlier one
    (a reloaded module, or a test's stand-in step). `streaming=None`: row-wise when it reads prompts
    and writes a dataset."""
    if streaming is None:
        streaming = input == "prompt" and output not in ARTIFACT_KINDS
    if streaming and output in ARTIFACT_KINDS:
        raise ValueError(f"step '{name}': a {output} step gets its whole input; it cannot be streaming")
    st = StepType(name, config, fn, input, output, (fn.__doc__ or "").strip().split("\n")[0], bool(streaming))
    _REGISTRY[name] = st
    return st


def step(name: str, *, config: type, input: str = "any", output: str = "pair", streaming: bool | None = None):
    """Decorator form of `register_step`; returns the function unchanged."""

    def deco(fn: StepFn) -> StepFn:
        register_step(name, config, fn, input=input, output=output, streaming=streaming)
        return fn

    return deco


def registered() -> dict[str, StepType]:
    """Whatever has been declared so far; `prefdata.catalog.step_types()` loads the built-in ones."""
    return dict(_REGISTRY)
