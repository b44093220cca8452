"""Transformers engine on a tiny random Llama: determinism, batching invariance, stops, scoring, cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from prefdata.engines import CachedEngine, EngineConfig, get_engine
from prefdata.engines.base import ChatRequest, SamplingParams
from prefdata.engines.cache import RequestCache, request_key
from prefdata.engines.transformers import TransformersEngine


def reqs(n=6):
    return [ChatRequest(messages=[{"role": "user", "content": f"Tell me about item number {i}" + " please" * (i % 3)}])
            for i in range(n)]


@pytest.fixture(scope="module")
def backend(tiny_model):
    return TransformersEngine(EngineConfig(model=tiny_model, progress=False))


def texts(outs):
    return [[c.text for c in cs] for cs in outs]


def test_same_seed_same_output_and_seed_changes_it(backend):
    eng = CachedEngine(backend, None)
    p = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)
    a, b = eng.generate(reqs(), p), eng.generate(reqs(), p)
    assert texts(a) == texts(b)
    c = eng.generate(reqs(), replace(p, seed=6))
    assert texts(a) != texts(c)
    # n samples of one request differ from each other
    assert any(cs[0] != cs[1] for cs in texts(a))


def test_rows_do_not_depend_on_batching_or_order(backend):
    p = SamplingParams(n=1, temperature=1.0, max_tokens=10, seed=1)
    together = texts(CachedEngine(backend, None).generate(reqs(), p))
    old = backend.cfg
    try:
        backend.cfg = old.model_copy(update={"max_batch_size": 1})
        alone = texts(CachedEngine(backend, None).generate(reqs(), p))
        backend.cfg = old.model_copy(update={"max_batch_size": 4})
        shuffled = texts(CachedEngine(backend, None).generate(list(reversed(reqs())), p))
    finally:
        backend.cfg = old
    assert together == alone == list(reversed(shuffled))


def test_greedy_matches_hf_generate(backend):
    r = reqs(1)[0]
    out = CachedEngine(backend, None).generate([r], SamplingParams(temperature=0, max_tokens=8))[0][0]
    ids = backend._encode(r)
    ref = backend.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=8, do_sample=False, eos_token_id=list(backend.eos_ids),
                                 pad_token_id=backend.tokenizer.pad_token_id)
    assert out.text == backend.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)


def test_max_tokens_and_stop_strings(backend):
    eng = CachedEngine(backend, None)
    out = eng.generate(reqs(3), SamplingParams(temperature=1.0, max_tokens=5, seed=2, logprobs=True))
    for (c,) in out:
        assert c.num_tokens <= 5 and c.logprob is not None and c.logprob <= 0
        assert c.finish_reason in ("length", "stop")
    # Use a piece of a real output as the stop string: the text must end right before it.
    long = eng.generate(reqs(1), SamplingParams(temperature=1.0, max_tokens=24, seed=3))[0][0].text
    stop = long[len(long) // 2: len(long) // 2 + 2]
    if stop.strip():
        cut = eng.generate(reqs(1), SamplingParams(temperature=1.0, max_tokens=24, seed=3, stop=(stop,)))[0][0]
        assert stop not in cut.text and long.startswith(cut.text) and cut.finish_reason == "stop"


def test_score_matches_manual_forward(backend):
    r = reqs(2)
    comps = ["hello there friend", "the quick brown fox"]
    got = backend.score(r, comps)
    for req, comp, g in zip(r, comps, got):
        p = backend._encode(req)
        c = backend.tokenizer(comp, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(torch.tensor([p + c])).logits[0].float(), -1)
        want = sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(c))
        assert g == pytest.approx(want, abs=1e-3)


class Counting:
    name, model_id = "counting", "m"

    def __init__(self):
        self.seen = 0

    def generate_samples(self, items, params, on_batch=None):
        from prefdata.engines.base import Completion

        self.seen += len(items)
        return [Completion(text=f"{r.messages[-1]['content']}#{s}#{params.seed + r.seed_offset}", finish_reason="stop")
                for r, s in items]

    def score(self, requests, completions):
        self.seen += len(requests)
        return [1.0] * len(requests)


def test_cache_hits_skip_backend_and_fill_only_missing_samples(tmp_path):
    backend = Counting()
    eng = CachedEngine(backend, RequestCache(tmp_path / "c.sqlite"))
    p = SamplingParams(n=2, seed=0)
    first = eng.generate(reqs(3), p)
    assert backend.seen == 6
    assert eng.generate(reqs(3), p) == first and backend.seen == 6
    eng.generate(reqs(3), replace(p, n=3))  # one new sample per request
    assert backend.seen == 9
    eng.score(reqs(2), ["a", "b"]), eng.score(reqs(2), ["a", "b"])
    assert backend.seen == 11


def test_cache_key_fields():
    r = reqs(1)[0]
    p = SamplingParams(seed=1)
    k = request_key("m", r, p, 0)
    assert k == request_key("m", r, replace(p, n=4), 0)  # n is not part of a sample's identity
    assert k != request_key("m", replace(r, template_version="t2"), p, 0)
    assert k != request_key("m", r, replace(p, seed=2), 0)
    assert k != request_key("m", r, p, 1)
    assert k != request_key("m2", r, p, 0)
    assert k != request_key("m", r, replace(p, temperature=0.5), 0)
    # the effective seed is what matters
    assert request_key("m", replace(r, seed_offset=1), p, 0) == request_key("m", r, replace(p, seed=2), 0)


def test_killed_run_resumes_without_regenerating(tmp_path, tiny_model):
    """SIGKILL a generating process mid-run; the rerun regenerates only what was not cached."""
    script = textwrap.dedent(f"""
        import os, sys
        from prefdata.engines import get_engine, EngineConfig
        from prefdata.engines.base import ChatRequest, SamplingParams
        eng = get_engine(EngineConfig(model={tiny_model!r}, cache_path={str(tmp_path / 'c.sqlite')!r},
                                      max_batch_size=2, progress=False))
        from prefdata.engines import transformers as te
        done, committed = [], [0]  # rows prefilled; rows handed to the cache
        admit, retire = te._Decoder._admit, te._Decoder._retire
        def counted_admit(d, free):
            # Kill when prompts would join, after the cache has committed KILL_AFTER rows.
            if os.environ.get("KILL_AFTER") and committed[0] >= int(os.environ["KILL_AFTER"]):
                os.kill(os.getpid(), 9)
            waiting = len(d.queue)
            admit(d, free)
            done.extend(range(waiting - len(d.queue)))
        def counted_retire(d):
            committed[0] += int(d.done.sum())
            retire(d)
        te._Decoder._admit, te._Decoder._retire = counted_admit, counted_retire
        reqs = [ChatRequest(messages=[{{"role": "user", "content": f"q{{i}}"}}]) for i in range(8)]
        out = eng.generate(reqs, SamplingParams(max_tokens=6, seed=0))  # one call, as a generator makes
        print("GENERATED", len(done))
        print("ROWS", [o[0].text for o in out])
    """)
    env = {**os.environ, "KILL_AFTER": "4"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL
    env.pop("KILL_AFTER")
    resumed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "GENERATED 4" in resumed.stdout  # 4 of 8 were cached before the kill
    fresh = subprocess.run([sys.executable, "-c", script.replace("c.sqlite", "d.sqlite")], env=env,
                           capture_output=True, text=True)
    rows = lambda s: [ln for ln in s.splitlines() if ln.startswith("ROWS")]
    assert rows(resumed.stdout) == rows(fresh.stdout)


def test_get_engine_rejects_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EngineConfig(backend="transformers", modle="x")


def test_missing_model_path_is_a_clear_error(tmp_path):
    from prefdata.errors import PrefdataError

    with pytest.raises(PrefdataError, match="model path not found"):
        get_engine(EngineConfig(model=str(tmp_path / "nope")))


def test_backends_never_share_cached_text(tmp_path):
    """The same request on two backends (or two servers) serving one model name samples differently."""
    from prefdata.engines import CachedEngine
    from prefdata.engines.scripted import ScriptedEngine

    cache = RequestCache(tmp_path / "c.sqlite")
    r = [ChatRequest(messages=[{"role": "user", "content": "hi"}])]
    a, b = ScriptedEngine(["from a"], model_id="m"), ScriptedEngine(["from b"], model_id="m")
    b.name = "other"
    c = ScriptedEngine(["from c"], model_id="m")
    c.base_url = "http://elsewhere/v1"
    assert CachedEngine(a, cache).generate(r, SamplingParams())[0][0].text == "from a"
    assert CachedEngine(b, cache).generate(r, SamplingParams())[0][0].text == "from b"
    assert CachedEngine(c, cache).generate(r, SamplingParams())[0][0].text == "from c"
    assert CachedEngine(ScriptedEngine(["again"], model_id="m"), cache).generate(r, SamplingParams())[0][0].text \
        == "from a"  # the same backend still replays its cache


# ----------------------------------------------------------------------------- stop strings (issue 13, item 7)


def test_stop_string_logprob_and_num_tokens_count_only_the_kept_text(tiny_model):
    from prefdata.engines import EngineConfig
    from prefdata.engines.transformers import TransformersEngine

    eng = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False))
    req = ChatRequest(messages=[{"role": "user", "content": "Tell me about bread."}])
    # Sampled (the greedy tiny model repeats one token); every row has its own seeded stream, so a
    # shorter max_tokens yields a prefix of the same tokens.
    sp = {"temperature": 1.0, "seed": 3, "logprobs": True}
    prefixes = [eng.generate_samples([(req, 0)], SamplingParams(max_tokens=j, **sp))[0] for j in range(1, 25)]
    full = prefixes[-1]
    assert full.num_tokens == 24
    texts = [""] + [c.text for c in prefixes]  # texts[j]: the text of the first j tokens
    # A stop string made of tokens m+1..m+2, printable and first seen right there.
    m = next(m for m in range(4, 22) if not texts[m].endswith("\ufffd")
             and (piece := texts[m + 2][len(texts[m]):]).isprintable() and piece.strip()
             and "\ufffd" not in piece and full.text.find(piece) == len(texts[m]))
    stop = texts[m + 2][len(texts[m]):]
    [cut] = eng.generate_samples([(req, 0)], SamplingParams(max_tokens=24, stop=(stop,), **sp))
    assert cut.text == texts[m] and cut.finish_reason == "stop"
    assert cut.num_tokens <= m  # the stop string's own tokens are not counted
    # The counted tokens are exactly those that make the text, and the log-prob is theirs.
    assert texts[cut.num_tokens] == cut.text or len(texts[cut.num_tokens]) >= len(cut.text)
    assert cut.logprob == pytest.approx(prefixes[cut.num_tokens - 1].logprob, abs=1e-5)


# ----------------------------------------------------------------------------- identical samples (issue 24)


def test_identical_samples_at_temperature_warn_once(capsys):
    # A server that ignores the temperature (generation_config with do_sample false) returns the same
    # text N times: best-of-N is then one answer, and the user is told once.
    from prefdata.engines import CachedEngine
    from prefdata.engines.base import ChatRequest, SamplingParams
    from prefdata.engines.scripted import ScriptedEngine

    eng = CachedEngine(ScriptedEngine(lambda req, s: "same answer"), None)
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(4)]
    eng.generate(reqs, SamplingParams(n=3, temperature=0.8))
    eng.generate(reqs, SamplingParams(n=3, temperature=0.8))
    err = capsys.readouterr().err
    assert err.count("identical samples for 4 of 4 prompts at temperature 0.8") == 1
    varied = CachedEngine(ScriptedEngine(lambda req, s: f"answer {s}"), None)
    varied.generate(reqs, SamplingParams(n=3, temperature=0.8))
    CachedEngine(ScriptedEngine(lambda req, s: "same"), None).generate(reqs, SamplingParams(n=3, temperature=0.0))
    assert "identical samples" not in capsys.readouterr().err
