"""Pointwise additive-rubric judge (Self-Rewarding LMs, Yuan et al. 2024, arXiv 2401.10020).

Each answer is judged k times (k samples of one request, so a resumed run replays them from the
request cache). A judgement's score is the number on its "Score: <n>" line, parsed strictly; a
judgement without one is null with its raw text kept, never a guess. An answer's score is the mean
of its parseable judgements, null when there are none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefdata.engines.base import ChatRequest, Engine, SamplingParams
from prefdata.prompts.pairwise import render_conversation
from prefdata.prompts.rubric import JUSTIFY_THEN_SCORE, RUBRIC, SCORE_FIRST, SCORE_PREFIX, TEMPLATE_VERSION

__all__ = [
    "JUSTIFY_THEN_SCORE",
    "RUBRIC",
    "SCORE_FIRST",
    "SCORE_PREFIX",
    "TEMPLATE_VERSION",
    "RubricJudge",
    "last_user_text",
    "mean_score",
    "parse_score",
    "parse_score_first",
]

# A whole line "Score: n" (optionally bold, optionally "/5"); a score mentioned mid-sentence is not one.
_SCORE = re.compile(r"^\W*score\s*[:=]\s*\**\s*([0-5](?:\.\d+)?)\s*(?:/\s*5)?\s*\**\s*\.?\s*$",
                    re.IGNORECASE | re.MULTILINE)
# After a forced "Score: " prefix: the number must come first ("4", "4/5", "4 out of 5", "2.5").
# A range ("3-4", "3 to 4") or another scale ("3/4") is no score: taking its first number would guess.
_LEADING = re.compile(r"^\s*\**\s*([0-5](?:\.\d+)?)\b(?!\.\d)(?!\s*(?:[-\u2013\u2014~]|to\b|or\b)\s*\d)"
                      r"(?:\s*/\s*5)?(?!\s*/)")


def parse_score(text: str) -> float | None:
    """The number on the last "Score: n" line (0..5), or None."""
    hits = _SCORE.findall(text or "")
    return _in_range(float(hits[-1])) if hits else None


def parse_score_first(continuation: str) -> float | None:
    """The number the judge wrote right after the "Score: " prefix (0..5), or None."""
    m = _LEADING.match(continuation or "")
    return _in_range(float(m.group(1))) if m else None


def _in_range(v: float) -> float | None:
    return v if 0.0 <= v <= 5.0 else None  # "5.5" fits the regex but not the scale


def last_user_text(prompt: list[dict]) -> str:
    """The last user turn's text (the generators' prompts read it; the rubric judge reads the whole
    conversation)."""
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def mean_score(scores: list[float | None]) -> float | None:
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else None


@dataclass
class RubricJudge:
    k: int = 3
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 160
    score_first: bool = False  # see prompts.rubric.SCORE_FIRST

    @property
    def template_version(self) -> str:
        return TEMPLATE_VERSION + ("+score-first" if self.score_first else "")

    def requests(self, prompts: list[list[dict]], answers: list[str]) -> list[ChatRequest]:
        instruction = SCORE_FIRST if self.score_first else JUSTIFY_THEN_SCORE
        # The whole conversation, not only its last user turn: a follow-up ("shorter, please") is
        # judged against what it follows (template rubric-judge-2).
        return [ChatRequest(messages=[{"role": "user", "content": RUBRIC.format(conversation=render_conversation(p),
                                                                                 answer=a, instruction=instruction)}],
                            assistant_prefix=SCORE_PREFIX if self.score_first else "",
                            template_version=self.template_version)
                for p, a in zip(prompts, answers)]

    def judge(self, engine: Engine, prompts: list[list[dict]], answers: list[str], seed: int = 0):
        """Per answer: (raw judgements [k], parsed scores [k] with None, mean of the parseable or None)."""
        outs = engine.generate(self.requests(prompts, answers),
                               SamplingParams(n=self.k, temperature=self.temperature, top_p=self.top_p,
                                              max_tokens=self.max_tokens, seed=seed))
        if self.score_first:
            raws = [[SCORE_PREFIX + c.text for c in cs] for cs in outs]  # raw text as the judge "said" it
            scores = [[parse_score_first(t[len(SCORE_PREFIX):]) for t in r] for r in raws]
        else:
            raws = [[c.text for c in cs] for cs in outs]
            scores = [[parse_score(t) for t in r] for r in raws]
        return raws, scores, [mean_score(s) for s in scores]
