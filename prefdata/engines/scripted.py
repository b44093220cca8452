"""A deterministic engine that returns given strings: for unit tests of generators and judges."""

from __future__ import annotations

from typing import Callable

from prefdata.engines.base import ChatRequest, Completion, SamplingParams


class ScriptedEngine:
    name = "scripted"

    def __init__(self, responses: list[str] | Callable[[ChatRequest, int], str], model_id: str = "scripted"):
        self.responses = responses
        self.model_id = model_id
        self.calls: list[ChatRequest] = []
        self._next = 0

    def _answer(self, req: ChatRequest, sample: int) -> str:
        self.calls.append(req)
        if callable(self.responses):
            return self.responses(req, sample)
        text = self.responses[self._next % len(self.responses)]
        self._next += 1
        return text

    def generate_samples(self, items: list[tuple[ChatRequest, int]], params: SamplingParams,
                         on_batch=None) -> list[Completion]:
        return [Completion(text=self._answer(r, s), finish_reason="stop") for r, s in items]

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[list[Completion]]:
        return [[Completion(text=self._answer(r, s), finish_reason="stop") for s in range(params.n)] for r in requests]

    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        return [-float(len(c)) for c in completions]
