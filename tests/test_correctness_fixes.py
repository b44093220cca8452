"""Issue 13, item 7: each correctness fix with a test that fails on the code before it."""

from __future__ import annotations

import pytest

from prefdata.engines.base import ChatRequest, SamplingParams

# ----------------------------------------------------------------------------- stop strings


def test_stop_string_logprob_and_num_tokens_count_only_the_kept_text(tiny_model):
    from prefdata.engines import EngineConfig
    from prefdata.engines.transformers import TransformersEngine

    eng = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False))
    req = ChatRequest(messages=[{"role": "user", "content": "Tell me about bread."}])
    # Sampled (the greedy tiny model repeats one token); every row has its own seeded stream, so a
    # shorter max_tokens yields a prefix of the same tokens.
    sp = dict(temperature=1.0, seed=3, logprobs=True)
    prefixes = [eng.generate_samples([(req, 0)], SamplingParams(max_tokens=j, **sp))[0] for j in range(1, 25)]
    full = prefixes[-1]
    assert full.num_tokens == 24
    texts = [""] + [c.text for c in prefixes]  # texts[j]: the text of the first j tokens
    # A stop string made of tokens m+1..m+2, printable and first seen right there.
    m = next(m for m in range(4, 22) if (piece := texts[m + 2][len(texts[m]):]).isprintable() and piece.strip()
             and "\ufffd" not in piece and full.text.find(piece) == len(texts[m]))
    stop = texts[m + 2][len(texts[m]):]
    [cut] = eng.generate_samples([(req, 0)], SamplingParams(max_tokens=24, stop=(stop,), **sp))
    assert cut.text == texts[m] and cut.finish_reason == "stop"
    assert cut.num_tokens <= m  # the stop string's own tokens are not counted
    # The counted tokens are exactly those that make the text, and the log-prob is theirs.
    assert texts[cut.num_tokens] == cut.text or len(texts[cut.num_tokens]) >= len(cut.text)
    assert cut.logprob == pytest.approx(prefixes[cut.num_tokens - 1].logprob, abs=1e-5)


# ----------------------------------------------------------------------------- judge parsing


@pytest.mark.parametrize("text,want", [
    ("Winner: a tie", "tie"), ("Winner: A tie.", "tie"), ("Winner: it's a tie", "tie"), ("Winner: draw", "tie"),
    ("Winner: neither", "tie"), ("Winner: A and B", None), ("Winner: A/B", None), ("Winner: Assistant B", "b"),
    ("Winner: A", "a"), ("Winner: a, it is clearer", "a"), ("**Winner:** B.", "b"),
])
def test_winner_edge_cases(text, want):
    from prefdata.judges.pairwise import parse_winner

    assert parse_winner(text) == want


@pytest.mark.parametrize("cont,want", [("3-4", None), ("3 - 4", None), ("3\u20134", None), ("3 to 4", None),
                                       ("3 or 4", None), ("3/4", None), ("4/5", 4.0), ("3-star answer", 3.0),
                                       ("4 out of 5", 4.0)])
def test_score_ranges_are_not_scores(cont, want):
    from prefdata.judges.pointwise import parse_score, parse_score_first

    assert parse_score_first(cont) == want
    assert parse_score(f"Score: {cont}") in (want, None)  # the line form is stricter still
    assert parse_score("Score: 3-4") is None
