"""The pairwise judge, position-swapped: each pair is shown as (A, B) and as (B, A).

One judge for every pairwise comparison in prefdata: RLCD-Rescore, BPO evaluation, `prefdata eval
policy` and the `judge` voter all call it, with one template (`prefdata.prompts.pairwise`) that
renders the whole conversation, so a multi-turn prompt keeps its context.

Two readings of the same requests:
- a discrete verdict per order ('a', 'b', 'tie' or None). A consistent verdict is a label; one that
  flips with the order, an explicit tie, or an unparseable answer in either order is a tie (None),
  never a guess (the pairwise extension of Self-Rewarding LMs, arXiv 2401.10020; position bias:
  Zheng et al. 2023, arXiv 2306.05685);
- with method "logprob", a continuous score: logit(x over y) = log p(" A") - log p(" B") after a
  forced "Winner:" with x shown as A, averaged with the same read off the swapped order, so a
  constant preference for one slot cancels (RLCD-Rescore, arXiv 2307.12950). This is the voter's d.

Methods: "generate" (the judge reasons briefly and ends with "Winner: A|B|tie"; every engine) or
"logprob" (needs an engine that can score: transformers, vLLM; never unparseable, which matters
for small judges). Both orders of every pair go to the engine in one call, so it can batch them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from prefdata.engines.base import ChatRequest, Engine, SamplingParams
from prefdata.prompts import pairwise as tpl
from prefdata.prompts.pairwise import TEMPLATE_VERSION

__all__ = ["TEMPLATE_VERSION", "Comparison", "PairwiseJudge", "combine_orders", "parse_winner"]

# The tie words come first: in "Winner: a tie" the article must not be read as answer A. A verdict
# naming both ("A and B", "A/B") is no verdict.
_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(?:it\s*'?s\s+|it\s+is\s+)?"
                     r"(?:(an?\s+tie|tie|a\s+draw|draw|neither)|(?:(?:assistant|response|answer|output)\s+)?(a|b))\b"
                     r"(?!\s*(?:and|&|/|or)\s*(?:(?:assistant|response|answer|output)\s+)?[ab]\b)", re.IGNORECASE)

# Pairs per engine call in the logprob method: small enough for the progress bar to move, and each
# call holds whole pairs (both orders, both letters). The cache is per request, so chunking changes
# no key and no score.
CHUNK_PAIRS = 128


def parse_winner(text: str) -> str | None:
    """'a', 'b' or 'tie' from the last "Winner: …" in the text, or None."""
    hits = list(_WINNER.finditer(text or ""))
    if not hits:
        return None
    return "tie" if hits[-1].group(1) else hits[-1].group(2).lower()


def combine_orders(first: str | None, second: str | None) -> float | None:
    """first: verdict with x shown as A; second: with x shown as B. 1.0 (x wins), 0.0 (y wins) or None."""
    if first == "a" and second == "b":
        return 1.0
    if first == "b" and second == "a":
        return 0.0
    return None


@dataclass
class Comparison:
    """Both orders of every pair. Order 1 shows x as A; order 2 shows x as B."""

    first: list[str | None]  # verdict letter per pair in order 1: 'a', 'b', 'tie' or None (unparseable)
    second: list[str | None]  # the same in order 2
    raw_ab: list[str]  # the judge's text (or, for logprob, its evidence line) in order 1
    raw_ba: list[str]
    logit: np.ndarray | None = None  # (n, 2): log p(" A") - log p(" B") per order; logprob only

    @property
    def verdicts(self) -> list[float | None]:
        """P(x beats y) per pair: 1.0, 0.0, or None for a tie (order-dependent, explicit or unparseable)."""
        return [combine_orders(f, s) for f, s in zip(self.first, self.second)]

    @property
    def score(self) -> np.ndarray:
        """Mean over both orders of logit(x over y); > 0 when the judge prefers x. logprob only."""
        if self.logit is None:
            raise ValueError("a continuous score needs the logprob method")
        return 0.5 * (self.logit[:, 0] - self.logit[:, 1])  # order 2 shows x as B: its x-over-y is -logit


@dataclass
class PairwiseJudge:
    method: str = "generate"  # or "logprob"
    temperature: float = 0.0
    max_tokens: int = 128

    @property
    def template_version(self) -> str:
        return TEMPLATE_VERSION + ("+logprob" if self.method == "logprob" else "")

    def requests(self, prompts: list[list[dict]], xs: list[str], ys: list[str]) -> list[ChatRequest]:
        """Two requests per pair, in pair order: x as A, then x as B."""
        body = tpl.LOGPROB_PROMPT if self.method == "logprob" else tpl.PROMPT
        prefix = tpl.LOGPROB_PREFIX if self.method == "logprob" else ""
        reqs = []
        for p, x, y in zip(prompts, xs, ys):
            conv = tpl.render_conversation(p)
            for a, b in ((x, y), (y, x)):
                reqs.append(ChatRequest(messages=[{"role": "user", "content": body.format(conversation=conv, a=a, b=b)}],
                                        assistant_prefix=prefix, template_version=self.template_version))
        return reqs

    def compare(self, engine: Engine, prompts: list[list[dict]], xs: list[str], ys: list[str], seed: int = 0,
                progress: str | None = None) -> Comparison:
        """Judge every pair in both orders. `progress`: a label for the progress bar (logprob method)."""
        if self.method not in ("generate", "logprob"):
            raise ValueError(f"unknown pairwise judge method '{self.method}' (generate or logprob)")
        reqs = self.requests(prompts, xs, ys)
        if self.method == "logprob":
            lp = self._logprobs(engine, reqs, progress)  # (2n, 2): [log p(" A"), log p(" B")] per request
            logit = lp[:, 0] - lp[:, 1]
            texts = [_evidence(la, lb) for la, lb in lp]
            letters = ["a" if v > 0 else "b" if v < 0 else "tie" for v in logit]  # exact equality: no preference
            return Comparison(letters[0::2], letters[1::2], texts[0::2], texts[1::2], logit.reshape(-1, 2))
        outs = engine.generate(reqs, SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=seed))
        texts = [o[0].text for o in outs]
        letters = [parse_winner(t) for t in texts]
        return Comparison(letters[0::2], letters[1::2], texts[0::2], texts[1::2])

    def judge(self, engine: Engine, prompts: list[list[dict]], xs: list[str], ys: list[str], seed: int = 0):
        """Per pair: (P(x beats y) in {1, 0} or None for a tie, raw (x=A) text, raw (x=B) text)."""
        c = self.compare(engine, prompts, xs, ys, seed=seed)
        return c.verdicts, c.raw_ab, c.raw_ba

    @staticmethod
    def _logprobs(engine: Engine, reqs: list[ChatRequest], progress: str | None) -> np.ndarray:
        """(len(reqs), 2): log p(" A") and log p(" B") per request, a chunk of whole pairs per engine call."""
        from prefdata.progress import progress_bar

        a_opt, b_opt = tpl.LOGPROB_OPTIONS
        lp: list[float] = []
        step = 2 * CHUNK_PAIRS
        with progress_bar(progress or "", total=len(reqs) // 2, unit="pairs", disable=progress is None) as advance:
            for s in range(0, len(reqs), step):
                chunk = reqs[s:s + step]
                lp += engine.score([r for r in chunk for _ in (0, 1)], [o for _ in chunk for o in (a_opt, b_opt)])
                advance(len(chunk) // 2)
        return np.asarray(lp, dtype=float).reshape(-1, 2)


def _evidence(la: float, lb: float) -> str:
    """The raw evidence kept for the table in place of a generated text: the verdict and both log-probs."""
    win = "A" if la > lb else "B" if lb > la else "tie"
    return f"Winner: {win} (logp A={la:.3f}, B={lb:.3f})"
