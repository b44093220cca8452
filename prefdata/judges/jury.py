"""A jury: several pairwise judges, each on its own engine and model, each shown both orders.

Every juror is the position-swapped `PairwiseJudge` (a verdict must survive swapping the answers,
else it is a tie; Zheng et al. 2023, arXiv 2306.05685). A panel of different models beats one large
judge and dilutes any one model's self-preference (Verga et al. 2024, "Replacing Judges with
Juries", arXiv 2404.18796). The jury keeps each juror's verdict in each order, so `evals.judge` can
measure position consistency, length bias, tie rate and self-preference per juror.

As a voter family (`jury_votes`) the jurors are members of one family, `jury:0`, `jury:1`, ...
(`curation.vote` averages the members of a family), each voting +1 (chosen wins both orders),
-1 (rejected wins both) or 0 (tie, order-dependent, or unparseable).

    judges:                          # a jury YAML (`prefdata eval judge --judge jury.yaml`)
      - engine: {backend: transformers, model: HuggingFaceTB/SmolLM2-135M-Instruct}
        method: logprob
      - engine: {backend: openai, model: gpt-4o-mini, base_url: https://api.openai.com/v1}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefdata.engines import EngineOverrides, overrides_dict
from prefdata.errors import ConfigError
from prefdata.judges.pairwise import PairwiseJudge, parse_winner

BACKENDS = ("transformers", "vllm", "openai")


class JurorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Label on the card and the voter name; default the engine's model id.")
    # Typed like the judge voter's and the pipeline's engine blocks: a misspelt key or a bad value fails
    # when the jury (or the pipeline) loads, naming its YAML path, not when the juror's engine is built.
    engine: EngineOverrides = Field(default_factory=EngineOverrides, description="EngineConfig fields for this "
                                    "judge (backend, model, base_url, api_key_env, ...); empty: the pipeline's "
                                    "(or the CLI's) engine.")
    method: Literal["generate", "logprob"] = Field("generate", description="generate: the judge ends with "
                                                   "'Winner: A|B|tie' (any engine); logprob: ' A' vs ' B' after a "
                                                   "forced 'Winner:' (engines that score), as in RLCD-Rescore.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of a generate judge, in [0, 2]; "
                               "0 (greedy) makes the verdict reproducible.")
    max_tokens: int = Field(128, ge=1, le=8192, description="Tokens a generate judge may spend on its reasoning and "
                            "verdict, in [1, 8192].")


class JuryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judges: list[JurorConfig] = Field(..., min_length=1, description="The jurors, one or more.")
    seed: int = Field(0, description="Sampling seed passed to every juror's engine.")


def load_jury(specs: list[str], method: str = "generate") -> JuryConfig:
    """A jury from CLI values: each a YAML file (a JuryConfig, or a list of jurors) or a model spec
    `[BACKEND:]MODEL` (backend transformers unless it names one of transformers, vllm, openai)."""
    import yaml

    judges: list[JurorConfig] = []
    seed = 0
    for spec in specs:
        path = Path(spec)
        if spec.endswith((".yaml", ".yml")) or path.is_file():
            if not path.is_file():
                raise ConfigError(f"{spec}: no such jury file")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise ConfigError(f"{spec}: not valid YAML ({str(e).splitlines()[0]})") from None
            data = {"judges": data} if isinstance(data, list) else data
            try:
                cfg = JuryConfig.model_validate(data)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ConfigError(f"{spec}: key '{where}': {err['msg']}") from None
            judges += cfg.judges
            seed = cfg.seed
            continue
        backend, _, model = spec.partition(":")
        if backend not in BACKENDS or not model:
            backend, model = "transformers", spec
        judges.append(JurorConfig(engine={"backend": backend, "model": model}, method=method))
    if not judges:
        raise ConfigError("a jury needs at least one judge (--judge MODEL, BACKEND:MODEL or jury.yaml)")
    return JuryConfig(judges=judges, seed=seed)


@dataclass
class JurorVerdicts:
    """One juror on n pairs (x, y): its verdict in each order and the swap-consistent one."""

    name: str
    model_id: str
    first: list[str | None]  # x shown as A: 'a' (x wins), 'b', 'tie' or None (unparsed)
    second: list[str | None]  # x shown as B: 'b' (x wins), 'a', 'tie' or None
    verdict: list[float | None]  # 1.0 x wins in both orders, 0.0 y wins in both, None otherwise
    raw_first: list[str] = field(repr=False, default_factory=list)
    raw_second: list[str] = field(repr=False, default_factory=list)

    def vote(self) -> np.ndarray:
        """+1 / -1 / 0 per pair: x, y, or no swap-consistent winner."""
        return np.array([0.0 if v is None else 2.0 * v - 1.0 for v in self.verdict])


def run_juror(engine, juror: JurorConfig, prompts: list[list[dict]], xs: list[str], ys: list[str],
              seed: int = 0) -> JurorVerdicts:
    judge = PairwiseJudge(method=juror.method, temperature=juror.temperature, max_tokens=juror.max_tokens)
    verdicts, raw_ab, raw_ba = judge.judge(engine, prompts, xs, ys, seed=seed)
    return JurorVerdicts(name=juror.name or engine.model_id, model_id=engine.model_id,
                         first=[parse_winner(t) for t in raw_ab], second=[parse_winner(t) for t in raw_ba],
                         verdict=list(verdicts), raw_first=list(raw_ab), raw_second=list(raw_ba))


def run_jury(jury: JuryConfig, engine_for, prompts: list[list[dict]], xs: list[str], ys: list[str],
             progress: bool = True) -> list[JurorVerdicts]:
    """Every juror on every pair; `engine_for(overrides: dict)` (the fields the juror set) gives each
    juror its engine."""
    from prefdata.progress import progress_bar

    engines: dict[str, object] = {}  # two jurors on one engine (say generate and logprob) load it once
    out = []
    with progress_bar("jury", total=len(jury.judges), unit="judges", disable=not progress) as advance:
        for juror in jury.judges:
            overrides = overrides_dict(juror.engine)
            key = json.dumps(overrides, sort_keys=True, default=str)
            if key not in engines:
                engines[key] = engine_for(overrides)
            out.append(run_juror(engines[key], juror, prompts, xs, ys, seed=jury.seed))
            advance(1)
    return out


def majority(verdicts: list[JurorVerdicts]) -> list[float | None]:
    """The jury's verdict per pair: the side more jurors chose (swap-consistently); a draw is a tie."""
    s = np.sum([v.vote() for v in verdicts], axis=0)
    return [1.0 if x > 0 else 0.0 if x < 0 else None for x in s]


def judge_inputs(table) -> tuple[list[list[dict]], list[str], list[str]]:
    """(prompts, final chosen answers, final rejected answers) of a pair table."""
    prompts = table.column("prompt").to_pylist()
    chosen = [c[-1]["content"] for c in table.column("chosen").to_pylist()]
    rejected = [r[-1]["content"] for r in table.column("rejected").to_pylist()]
    return prompts, chosen, rejected


def jury_votes(table, jury: JuryConfig, engine_for, progress: bool = True,
               keep: list | None = None) -> dict[str, np.ndarray]:
    """The jury as one voter family: {"jury:i": +1/-1/0 per pair, chosen over rejected}. `keep`, when
    given, receives the jurors' verdicts: the clean_labels card measures the jury's biases from them
    (`evals.judge.evaluate`) without judging the pairs a second time."""
    prompts, chosen, rejected = judge_inputs(table)
    verdicts = run_jury(jury, engine_for, prompts, chosen, rejected, progress=progress)
    if keep is not None:
        keep.append(verdicts)
    return {f"jury:{i}": v.vote() for i, v in enumerate(verdicts)}
