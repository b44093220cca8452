"""Pointwise additive-rubric judge (Self-Rewarding LMs, Yuan et al. 2024, arXiv 2401.10020).

The rubric structure (one point per criterion, five criteria, a short justification, then a final
"Score: <n>" line) follows the paper; the wording is ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefdata.engines.base import ChatRequest, Engine, SamplingParams

TEMPLATE_VERSION = "rubric-judge-1"
RUBRIC = """Rate the assistant's reply to the user with the additive scale below. Start at 0 and add a point for each statement that holds:
1. The reply is on topic and gives some information related to the request.
2. The reply deals with a substantial part of the request, even if not all of it.
3. The reply answers the core of the request in a useful way.
4. The reply is direct, complete and well organised, written from an assistant's point of view.
5. The reply is expert-level, tailored to the request and engaging, with nothing extraneous.

User request:
{question}

Assistant reply:
{answer}

{instruction}"""

JUSTIFY_THEN_SCORE = 'Write at most three sentences of justification, then end with a final line of the form "Score: <points>".'
# Small models rarely reach a score line after free-form justification; starting the reply with
# "Score:" (as an assistant prefix) makes the number the first thing they write.
SCORE_FIRST = 'Start your reply with "Score: <points>", then justify it in at most two sentences.'
SCORE_PREFIX = "Score: "

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*([0-5](?:\.\d+)?)\s*(?:/\s*5)?\**\s*$", re.IGNORECASE | re.MULTILINE)
_LEADING = re.compile(r"^\s*\**\s*([0-5](?:\.\d+)?)\b(?!\.\d)(?:\s*/\s*5)?")


def parse_score(text: str) -> float | None:
    """The number on the last "Score: n" line (0..5), or None. Never inferred from anything else."""
    hits = _SCORE.findall(text or "")
    if not hits:
        return None
    v = float(hits[-1])
    return v if 0.0 <= v <= 5.0 else None


def last_user_text(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def parse_score_first(continuation: str) -> float | None:
    """The number the judge wrote right after the "Score: " prefix (0..5), or None."""
    m = _LEADING.match(continuation or "")
    if not m:
        return None
    v = float(m.group(1))
    return v if 0.0 <= v <= 5.0 else None


@dataclass
class RubricJudge:
    k: int = 3
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 160
    score_first: bool = False  # see SCORE_FIRST

    def requests(self, prompts: list[list[dict]], answers: list[str]) -> list[ChatRequest]:
        instruction = SCORE_FIRST if self.score_first else JUSTIFY_THEN_SCORE
        version = TEMPLATE_VERSION + ("+score-first" if self.score_first else "")
        return [ChatRequest(messages=[{"role": "user", "content": RUBRIC.format(question=last_user_text(p), answer=a,
                                                                                 instruction=instruction)}],
                            assistant_prefix=SCORE_PREFIX if self.score_first else "", template_version=version)
                for p, a in zip(prompts, answers)]

    def judge(self, engine: Engine, prompts: list[list[dict]], answers: list[str], seed: int = 0):
        """Per answer: (raw judgements [k], parsed scores [k] with None, mean of the parseable or None)."""
        outs = engine.generate(self.requests(prompts, answers),
                               SamplingParams(n=self.k, temperature=self.temperature, top_p=self.top_p,
                                              max_tokens=self.max_tokens, seed=seed))
        if self.score_first:
            raws = [[SCORE_PREFIX + c.text for c in cs] for cs in outs]
            scores = [[parse_score_first(t[len(SCORE_PREFIX):]) for t in r] for r in raws]
        else:
            raws = [[c.text for c in cs] for cs in outs]
            scores = [[parse_score(t) for t in r] for r in raws]
        means = [(sum(v for v in s if v is not None) / n) if (n := sum(v is not None for v in s)) else None
                 for s in scores]
        return raws, scores, means
