"""Pairwise judge with position swapping: each pair is shown as (A, B) and as (B, A).

A consistent verdict is a label; a verdict that flips with the order, an explicit tie, or an
unparseable answer in either order is a tie (None), never a guess (Self-Rewarding LMs' pairwise
extension; Zheng et al. 2023 on position bias).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefdata.engines.base import ChatRequest, Engine, SamplingParams
from prefdata.judges.pointwise import last_user_text

TEMPLATE_VERSION = "pairwise-judge-1"
PROMPT = """Compare two assistant replies to the same user request. Judge which one is more helpful, honest and harmless; ignore length and order.

User request:
{question}

Reply A:
{a}

Reply B:
{b}

Explain your reasoning in at most two sentences, then end with a final line "Winner: A", "Winner: B" or "Winner: tie"."""

_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


def parse_winner(text: str) -> str | None:
    hits = _WINNER.findall(text or "")
    return hits[-1].lower() if hits else None


def combine_orders(first: str | None, second: str | None) -> float | None:
    """first: verdict with x as A; second: verdict with x as B. Returns 1.0 (x wins), 0.0 (y wins) or None."""
    if first == "a" and second == "b":
        return 1.0
    if first == "b" and second == "a":
        return 0.0
    return None


@dataclass
class PairwiseJudge:
    temperature: float = 0.0
    max_tokens: int = 128

    def judge(self, engine: Engine, prompts: list[list[dict]], xs: list[str], ys: list[str], seed: int = 0):
        """Per pair: (P(x beats y) in {1, 0} or None for a tie, raw (A/B) text, raw (B/A) text)."""
        reqs = []
        for p, x, y in zip(prompts, xs, ys):
            q = last_user_text(p)
            reqs.append(ChatRequest(messages=[{"role": "user", "content": PROMPT.format(question=q, a=x, b=y)}],
                                    template_version=TEMPLATE_VERSION))
            reqs.append(ChatRequest(messages=[{"role": "user", "content": PROMPT.format(question=q, a=y, b=x)}],
                                    template_version=TEMPLATE_VERSION))
        outs = engine.generate(reqs, SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=seed))
        texts = [o[0].text for o in outs]
        verdicts = [combine_orders(parse_winner(texts[2 * i]), parse_winner(texts[2 * i + 1])) for i in range(len(xs))]
        return verdicts, texts[0::2], texts[1::2]
