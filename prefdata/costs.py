"""Cost and budgets: token usage priced per model, and a run that stops before it overspends.

    budget: {usd: 5.0, tokens: 2000000}   # in the pipeline YAML; either or both
    prices: my_prices.yaml                # optional; entries win over the packaged prefdata/data/prices.yaml

Cost is what the servers bill: the engines count prompt and completion tokens from each reply's
`usage` block (failed replies the server still billed included, `billed_failures`), and this module
multiplies them by the model's price in USD per million tokens. Local backends (transformers, vLLM,
scripted) cost nothing unless a prices file names their model; a remote model with no price has an
unknown cost, and a USD budget refuses to run it rather than guess.

The budget covers one pipeline run until it completes, across its interrupted attempts: what each
attempt spent is kept in `$PREFDATA_HOME/runs/budget-<pipeline>.json` and counted against the next,
and the file is removed when the run completes. Before every engine call, each request not already
in the request cache is charged an upper estimate (prompt: its characters / 3 tokens, or the ratio
seen so far if higher; completion: `max_tokens`); the leading requests that fit are sent, and the run
then stops with one line (exit 1). The step that stopped commits nothing; the request cache keeps every
reply that came back, so a rerun with a larger budget resumes from there and pays only for the rest.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefdata.config import fmt_validation, read_yaml
from prefdata.errors import ConfigError, PrefdataError

DEFAULT_PRICES = Path(__file__).parent / "data" / "prices.yaml"
FREE_BACKENDS = ("transformers", "vllm", "scripted")  # run on this machine: no bill unless priced
CHARS_PER_TOKEN = 3.0  # prompt estimate before any reply: below English BPE's ~4, so it overestimates


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0, description="USD per million prompt (input) tokens.")
    output: float = Field(ge=0, description="USD per million completion (output) tokens.")

    def usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


class PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field("", description="When the prices were taken (shown in the card).")
    models: dict[str, Price] = Field(default_factory=dict, description="model id (or a `*` pattern) -> price")


class BudgetSpec(BaseModel):
    """`budget:` in a pipeline. The run stops before the next engine call could pass either limit."""

    model_config = ConfigDict(extra="forbid")
    usd: float | None = Field(None, gt=0, description="Most USD the run may spend (priced by `prices`).")
    tokens: int | None = Field(None, ge=1, description="Most tokens (prompt + completion + generated) the run "
                                                       "may use.")


def load_prices(user: str | Path | None = None, base: Path | None = None) -> tuple[dict[str, Price], str]:
    """(model -> price, version note): the packaged table with the user's file over it. `base`: the
    folder a relative user path is read from (the pipeline file's)."""
    files = [DEFAULT_PRICES]
    if user:
        p = Path(user).expanduser()
        if not p.is_absolute() and base is not None and not p.exists():
            p = base / p
        if not p.is_file():
            raise ConfigError(f"prices: no such file {p}")
        files.append(p)
    prices: dict[str, Price] = {}
    versions = []
    for f in files:
        raw = read_yaml(f)
        try:
            table = PriceFile.model_validate(raw if raw is not None else {})
        except ValidationError as e:
            raise ConfigError(fmt_validation(str(f), "", e)) from None
        prices.update(table.models)
        versions.append(f"{f.name} {table.version}".strip())
    return prices, ", ".join(versions)


def price_for(prices: dict[str, Price], model: str) -> Price | None:
    """Exact id first, then the longest matching `*` pattern (the most specific)."""
    if model in prices:
        return prices[model]
    hits = [k for k in prices if "*" in k and fnmatch.fnmatchcase(model, k)]
    return prices[max(hits, key=len)] if hits else None


class BudgetExceeded(PrefdataError):
    """The run stopped before an engine call could pass the budget; nothing of the step is committed."""


def _tokens(stats: dict) -> int:
    return int(stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0) + stats.get("generated_tokens", 0))


def _prompt_chars(req) -> int:
    return sum(len(str(m.get("content") or "")) + 8 for m in req.messages) + len(req.assistant_prefix or "")


@dataclass
class Meter:
    """Prices every engine a run made and guards its budget. `engines` is the run's own dict (key ->
    engine), so engines made later are seen too."""

    prices: dict[str, Price]
    prices_version: str = ""
    budget: BudgetSpec | None = None
    engines: dict = field(default_factory=dict)
    ledger: Path | None = None
    carried: dict = field(default_factory=lambda: {"usd": 0.0, "tokens": 0})  # earlier attempts' spend
    _chars: dict = field(default_factory=dict)  # engine id -> prompt characters sent (for the token ratio)

    @classmethod
    def for_run(cls, spec, pipeline_path: str | Path, engines: dict, home: Path) -> Meter:
        prices, version = load_prices(getattr(spec, "prices", None), Path(pipeline_path).resolve().parent)
        budget = getattr(spec, "budget", None)
        ledger = None
        carried = {"usd": 0.0, "tokens": 0}
        if budget is not None:
            key = hashlib.sha256(f"{Path(pipeline_path).resolve()}\0{spec.name}".encode()).hexdigest()[:12]
            ledger = home / "runs" / f"budget-{spec.name}-{key}.json"
            if ledger.is_file():
                try:
                    got = json.loads(ledger.read_text())
                    carried = {"usd": float(got.get("usd", 0.0)), "tokens": int(got.get("tokens", 0))}
                except (ValueError, TypeError, AttributeError):
                    raise PrefdataError(f"{ledger}: unreadable budget ledger; delete it to start the budget "
                                        "afresh") from None
        return cls(prices, version, budget, engines, ledger, carried)

    # -- prices ---------------------------------------------------------------------------------
    def price(self, engine) -> Price | None:
        """The engine's price; free backends without one cost 0; None: a remote model with no price."""
        p = price_for(self.prices, getattr(engine, "model_id", ""))
        if p is None and getattr(engine, "name", "") in FREE_BACKENDS:
            return Price(input=0.0, output=0.0)
        return p

    def check(self, engine) -> None:
        """A USD budget cannot guard a model whose price is unknown: refuse before its first request."""
        if self.budget is not None and self.budget.usd is not None and self.price(engine) is None:
            raise ConfigError(f"budget.usd is set but model '{engine.model_id}' ({engine.name}) has no price: add "
                              f"it to a prices file (`prices:` in the pipeline; see {DEFAULT_PRICES.name})")

    def cost(self, stats_by_engine: dict[str, dict], before: dict[str, dict] | None = None) -> dict[str, Any]:
        """{"usd": total or None when some model is unpriced, "tokens", "models": {model: {...}}} of the
        stats deltas since `before`."""
        before = before or {}
        # billable: some model is remote or explicitly priced (a local-only run shows no cost lines).
        out: dict[str, Any] = {"usd": 0.0, "tokens": 0, "models": {}, "unpriced": [], "billable": False}
        for key, stats in stats_by_engine.items():
            eng = self.engines.get(key)
            prev = before.get(key, {})
            d = {k: int(stats.get(k, 0)) - int(prev.get(k, 0)) for k in ("prompt_tokens", "completion_tokens",
                                                                           "generated_tokens", "billed_failures")}
            if not any(d.values()):
                continue
            model = getattr(eng, "model_id", key)
            price = self.price(eng) if eng is not None else None
            out["billable"] |= not (getattr(eng, "name", "") in FREE_BACKENDS
                                    and price_for(self.prices, model) is None)
            usd = price.usd(d["prompt_tokens"], d["completion_tokens"] + d["generated_tokens"]) if price else None
            m = out["models"].setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "generated_tokens": 0,
                                                 "billed_failures": 0, "usd": 0.0})
            for k, v in d.items():
                m[k] += v
            out["tokens"] += d["prompt_tokens"] + d["completion_tokens"] + d["generated_tokens"]
            if usd is None:
                m["usd"] = None
                out["unpriced"].append(model)
            elif m["usd"] is not None:
                m["usd"] += usd
        if out["unpriced"]:
            out["usd"] = None
        else:
            out["usd"] = sum(m["usd"] for m in out["models"].values())
        return out

    def spent(self) -> tuple[float, int]:
        """(USD, tokens) spent by this run's engines plus earlier attempts (unpriced models count 0)."""
        c = self.cost({k: dict(e.stats or {}) for k, e in self.engines.items()})
        usd = sum(m["usd"] or 0.0 for m in c["models"].values())
        return self.carried["usd"] + usd, self.carried["tokens"] + c["tokens"]

    # -- the guard ------------------------------------------------------------------------------
    def admit(self, engine, requests: list, params) -> tuple[int, float, int]:
        """How many leading requests fit the budget: (count, upper estimate of the rest's USD, tokens)."""
        if self.budget is None or not requests:
            return len(requests), 0.0, 0
        missing = np.asarray(self._missing(engine, requests, params), dtype=float)
        chars = np.asarray([_prompt_chars(r) for r in requests], dtype=float)
        stats = getattr(engine, "stats", None) or {}
        eid = id(getattr(engine, "_engine", engine))
        sent = self._chars.get(eid, 0.0)
        ratio = max(1 / CHARS_PER_TOKEN, stats.get("prompt_tokens", 0) / sent if sent else 0.0)
        t_in = np.ceil(chars * ratio) * missing
        t_out = float(params.max_tokens) * missing
        usd_spent, tok_spent = self.spent()
        fits = np.ones(len(requests), dtype=bool)
        if self.budget.tokens is not None:
            fits &= tok_spent + np.cumsum(t_in + t_out) <= self.budget.tokens
        price = self.price(engine)
        if self.budget.usd is not None:
            fits &= usd_spent + np.cumsum((t_in * price.input + t_out * price.output) / 1e6) <= self.budget.usd + 1e-12
        k = len(requests) if fits.all() else int(np.argmin(fits))
        self._chars[eid] = sent + float((chars * missing)[:k].sum())
        rest_usd = float(((t_in * price.input + t_out * price.output) / 1e6)[k:].sum()) if price else 0.0
        return k, rest_usd, int((t_in + t_out)[k:].sum())

    @staticmethod
    def _missing(engine, requests, params) -> list[int]:
        """Samples per request not in the request cache (cache hits cost nothing)."""
        inner = getattr(engine, "_engine", engine)
        cache, cache_id = getattr(inner, "cache", None), getattr(inner, "cache_id", None)
        if cache is None or cache_id is None:
            return [params.n] * len(requests)
        from prefdata.engines.cache import request_key

        keys = [[request_key(cache_id, r, params, s) for s in range(params.n)] for r in requests]
        hits = cache.get_many([k for ks in keys for k in ks])
        return [sum(k not in hits for k in ks) for ks in keys]

    def exceeded(self, step: str, left: int, rest_usd: float, rest_tokens: int) -> BudgetExceeded:
        usd, tokens = self.spent()
        self.save()
        parts = []
        if self.budget.usd is not None:
            parts.append(f"budget.usd {self.budget.usd:g}: spent ${usd:.4f}, the next {left:,} requests could cost "
                         f"up to ${rest_usd:.4f} more")
        if self.budget.tokens is not None:
            parts.append(f"budget.tokens {self.budget.tokens:,}: used {tokens:,}, the next {left:,} requests could "
                         f"use up to {rest_tokens:,}")
        bigger = (f"--set budget.usd={_roundup(usd + rest_usd)}" if self.budget.usd is not None
                  else f"--set budget.tokens={tokens + rest_tokens}")
        return BudgetExceeded(f"step '{step}' stopped before exceeding its budget ({'; '.join(parts)}); nothing "
                              f"committed for '{step}', the request cache keeps every finished request: rerun with "
                              f"a larger budget (e.g. {bigger}) to resume")

    # -- the ledger -----------------------------------------------------------------------------
    def save(self) -> None:
        """Record this attempt's spend so the next attempt counts it (budgeted runs only)."""
        if self.ledger is None:
            return
        usd, tokens = self.spent()
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ledger.with_name(f".{self.ledger.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"usd": usd, "tokens": tokens}))
        os.replace(tmp, self.ledger)

    def done(self) -> None:
        """The run completed: its budget starts afresh next time."""
        if self.ledger is not None and self.ledger.exists():
            self.ledger.unlink()


def _roundup(x: float) -> str:
    """A friendly larger figure: two significant digits, rounded up."""
    if x <= 0:
        return "1"
    e = math.floor(math.log10(x)) - 1
    return f"{math.ceil(x / 10 ** e) * 10 ** e:.{max(0, -e)}f}"


def summary_line(cost: dict) -> str:
    """`cost: $0.0123 (gpt-4o-mini: 1,200 in + 300 out tokens)`."""
    models = ", ".join(f"{m}: {v['prompt_tokens']:,} in + {v['completion_tokens'] + v['generated_tokens']:,} out"
                       + (f", {v['billed_failures']} billed failures" if v["billed_failures"] else "")
                       + ("" if v["usd"] is not None else " (no price)") for m, v in cost["models"].items())
    usd = "unknown" if cost["usd"] is None else f"${cost['usd']:.4f}"
    return f"cost: {usd} ({models})"


def card_markdown(cost: dict, prices_version: str) -> str:
    def usd(v) -> str:
        return "no price" if v is None else f"${v:.4f}"

    rows = [f"| {m} | {v['prompt_tokens']:,} | {v['completion_tokens'] + v['generated_tokens']:,} | "
            f"{v['billed_failures']:,} | {usd(v['usd'])} |" for m, v in cost["models"].items()]
    total = "unknown (a model has no price)" if cost["usd"] is None else f"${cost['usd']:.4f}"
    head = (f"Total: {total}, priced from {prices_version}. Tokens are what the servers reported, failed replies "
            "they still billed included; cache hits cost nothing.")
    return "\n".join([head, "",
                      "| model | input tokens | output tokens | billed failures | USD |", "|---|---|---|---|---|", *rows])
