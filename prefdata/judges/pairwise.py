"""Pairwise judge with position swapping: each pair is shown as (A, B) and as (B, A).

A consistent verdict is a label; a verdict that flips with the order, an explicit tie, or an
unparseable answer in either order is a tie (None), never a guess (the pairwise extension of
Self-Rewarding LMs, arXiv 2401.10020; position bias: Zheng et al. 2023, arXiv 2306.05685).

Two methods, same prompt body:
- "generate": the judge reasons briefly and ends with "Winner: A|B|tie" (works on every engine);
- "logprob": after a forced "Winner:" the log-likelihoods of " A" and " B" decide, as in
  RLCD-Rescore (arXiv 2307.12950). Needs an engine that can score (transformers, vLLM), and never
  yields an unparseable answer, which matters for small judges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefdata.engines.base import ChatRequest, Engine, SamplingParams
from prefdata.judges.pointwise import last_user_text
from prefdata.prompts import pairwise as tpl
from prefdata.prompts.pairwise import TEMPLATE_VERSION

__all__ = ["TEMPLATE_VERSION", "PairwiseJudge", "combine_orders", "parse_winner"]

# The tie words come first: in "Winner: a tie" the article must not be read as answer A. A verdict
# naming both ("A and B", "A/B") is no verdict.
_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(?:it\s*'?s\s+|it\s+is\s+)?"
                     r"(?:(an?\s+tie|tie|a\s+draw|draw|neither)|(?:(?:assistant|response|answer|output)\s+)?(a|b))\b"
                     r"(?!\s*(?:and|&|/|or)\s*(?:(?:assistant|response|answer|output)\s+)?[ab]\b)", re.IGNORECASE)


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
class PairwiseJudge:
    method: str = "generate"  # or "logprob"
    temperature: float = 0.0
    max_tokens: int = 128

    @property
    def template_version(self) -> str:
        return TEMPLATE_VERSION + ("+logprob" if self.method == "logprob" else "")

    def requests(self, prompts: list[list[dict]], xs: list[str], ys: list[str]) -> list[ChatRequest]:
        """Two requests per pair: x as A, then x as B."""
        body = tpl.LOGPROB_PROMPT if self.method == "logprob" else tpl.PROMPT
        prefix = tpl.LOGPROB_PREFIX if self.method == "logprob" else ""
        reqs = []
        for p, x, y in zip(prompts, xs, ys):
            q = last_user_text(p)
            for a, b in ((x, y), (y, x)):
                reqs.append(ChatRequest(messages=[{"role": "user", "content": body.format(question=q, a=a, b=b)}],
                                        assistant_prefix=prefix, template_version=self.template_version))
        return reqs

    def judge(self, engine: Engine, prompts: list[list[dict]], xs: list[str], ys: list[str], seed: int = 0):
        """Per pair: (P(x beats y) in {1, 0} or None for a tie, raw (x=A) text, raw (x=B) text)."""
        if self.method not in ("generate", "logprob"):
            raise ValueError(f"unknown pairwise judge method '{self.method}' (generate or logprob)")
        reqs = self.requests(prompts, xs, ys)
        if self.method == "logprob":
            texts = self._logprob_verdicts(engine, reqs)
        else:
            outs = engine.generate(reqs, SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens,
                                                        seed=seed))
            texts = [o[0].text for o in outs]
        verdicts = [combine_orders(parse_winner(texts[2 * i]), parse_winner(texts[2 * i + 1])) for i in range(len(xs))]
        return verdicts, texts[0::2], texts[1::2]

    @staticmethod
    def _logprob_verdicts(engine: Engine, reqs: list[ChatRequest]) -> list[str]:
        """One 'Winner: X (logp A, logp B)' line per request: the raw evidence kept for the table."""
        a_opt, b_opt = tpl.LOGPROB_OPTIONS
        lp = engine.score([r for r in reqs for _ in (0, 1)], [o for _ in reqs for o in (a_opt, b_opt)])
        out = []
        for i in range(len(reqs)):
            la, lb = lp[2 * i], lp[2 * i + 1]
            win = "A" if la > lb else "B" if lb > la else "tie"  # exact equality: no preference
            out.append(f"Winner: {win} (logp A={la:.3f}, B={lb:.3f})")
        return out
