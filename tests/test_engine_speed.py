"""The fast transformers engine keeps its semantics: counter-based per-row streams, exact top-k+top-p,
batch invariance (greedy and sampled, uneven prompts, stop strings), and score() equal to the naive
full log-softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefdata.engines import EngineConfig
from prefdata.engines.base import ChatRequest, SamplingParams
from prefdata.engines.sampling import _mix64, sample, stream_keys, uniforms
from prefdata.engines.transformers import TransformersEngine


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A tiny model's ops are microseconds: on a loaded machine a second OpenMP thread only spins.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def eng(tiny_model):
    return TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False))


def reqs(n):
    # Uneven prompt lengths, so batches left-pad differently from one-at-a-time runs.
    return [ChatRequest(messages=[{"role": "user", "content": f"Item {i}:" + " tell me more" * (i % 4)}])
            for i in range(n)]


# ----------------------------------------------------------------------------- the random stream


def test_splitmix64_matches_the_published_reference():
    # SplitMix64 seeded with 0: the first output is 0xE220A8397B1DCDAF (Vigna's splitmix64.c).
    assert int(_mix64(np.array([0x9E3779B97F4A7C15], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF

    def ref(seed: int, step: int) -> float:  # the same stream in plain Python integers
        m = (1 << 64) - 1

        def mix(z):
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
            return z ^ (z >> 31)
        return (mix((mix(seed) + (step + 1) * 0x9E3779B97F4A7C15) & m) >> 11) / 2.0 ** 53

    seeds = [0, 1, 12345, (1 << 63) - 1]
    for step in (0, 1, 7, 1000):
        got = uniforms(stream_keys(seeds), step)
        assert got.tolist() == [ref(s, step) for s in seeds]
    # A row's draw depends on its own seed and the step only, not on the other rows.
    assert uniforms(stream_keys([5, 9]), 3)[1] == uniforms(stream_keys([9]), 3)[0]


# ----------------------------------------------------------------------------- the sampler


def plain_top_p(logits, u, temperature, top_p):
    """The textbook nucleus sampler: sort the whole vocabulary, cut, inverse CDF with u."""
    z = logits / temperature
    p = torch.softmax(z.double(), -1)
    out = []
    for k in range(len(z)):
        ps, idx = p[k].sort(descending=True)
        keep = ps.cumsum(0) - ps < top_p
        q = ps * keep
        c = q.cumsum(0)
        out.append(int(idx[int((c <= u[k] * c[-1]).sum())]))
    return out


def test_top_k_prefilter_equals_plain_top_p():
    g = torch.Generator().manual_seed(0)
    # Peaked rows (the nucleus ends inside the top 64) and flat rows (it does not: the fallback sort).
    logits = torch.cat([torch.randn(24, 2000, generator=g) * 6, torch.randn(8, 2000, generator=g) * 0.1])
    for trial in range(20):
        u = torch.rand(len(logits), generator=g, dtype=torch.float64)
        got = sample(logits, u, 0.7, 0.9).tolist()
        assert got == sample(logits, u, 0.7, 0.9, top_k=logits.shape[-1]).tolist()  # no prefilter at all
        assert got == plain_top_p(logits, u, 0.7, 0.9), trial


def test_sampler_follows_the_distribution_and_greedy_is_argmax():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    u = (torch.arange(10000, dtype=torch.float64) + 0.5) / 10000  # midpoints: no draw on a boundary
    full = sample(logits.expand(len(u), 4), u, 1.0, 1.0)
    assert torch.bincount(full, minlength=4).tolist() == [5000, 3000, 1500, 500]
    nucleus = sample(logits.expand(len(u), 4), u, 1.0, 0.7)  # keeps 0.5 and 0.3, renormalised
    assert torch.bincount(nucleus, minlength=4).tolist() == [6250, 3750, 0, 0]
    assert sample(torch.tensor([[0.1, 3.0, -1.0]]), u[:1], 0.0, 0.9).tolist() == [1]


# ----------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("sp", [{"temperature": 0.0}, {"temperature": 1.0, "top_p": 0.9},
                                {"temperature": 0.8, "stop": ("e", "ab")}, {"temperature": 1.0, "eos": True}])
def test_batched_equals_one_at_a_time(eng, sp, monkeypatch):
    from transformers.cache_utils import Cache

    sp = dict(sp)
    if sp.pop("eos", False):  # a tenth of the vocabulary as EOS too, so rows end by EOS at different steps
        monkeypatch.setattr(eng, "eos_ids", eng.eos_ids | set(range(200, 200 + len(eng.tokenizer) // 10)))
        sp["stop"] = ()

    compactions = []
    select = Cache.batch_select_indices
    monkeypatch.setattr(Cache, "batch_select_indices", lambda c, idx: (compactions.append(len(idx)),
                                                                               select(c, idx)))
    items = [(r, s) for r in reqs(5) for s in (0, 1)]
    params = SamplingParams(max_tokens=12, seed=4, logprobs=True, **sp)
    together = eng.generate_samples(items, params)
    n_compacted = len(compactions)
    alone = [eng.generate_samples([it], params)[0] for it in items]
    assert [(c.text, c.num_tokens, c.finish_reason) for c in together] == \
        [(c.text, c.num_tokens, c.finish_reason) for c in alone]
    assert [c.logprob for c in together] == pytest.approx([c.logprob for c in alone], abs=1e-4)
    if "stop" in sp:
        assert any(c.finish_reason == "stop" for c in together)  # the stops were exercised
        assert n_compacted > 0  # and finished rows left the batch mid-way


def test_stop_cut_counts_only_the_kept_tokens(eng):
    req = reqs(3)[2]
    sp = {"temperature": 1.0, "seed": 11, "logprobs": True}
    full = eng.generate_samples([(req, 0)], SamplingParams(max_tokens=20, **sp))[0]
    prefixes = [eng.generate_samples([(req, 0)], SamplingParams(max_tokens=j, **sp))[0] for j in range(1, 21)]
    # A stop string that starts where a clean prefix ends (no split character before it).
    m = next(m for m in range(3, 18) if not prefixes[m - 1].text.endswith("\ufffd")
             and (piece := prefixes[m + 1].text[len(prefixes[m - 1].text):]).strip() and "\ufffd" not in piece
             and full.text.find(piece) == len(prefixes[m - 1].text))
    stop = prefixes[m + 1].text[len(prefixes[m - 1].text):]
    cut = eng.generate_samples([(req, 0)], SamplingParams(max_tokens=20, stop=(stop,), **sp))[0]
    assert cut.text == prefixes[m - 1].text and cut.finish_reason == "stop"
    assert cut.num_tokens == m and cut.logprob == pytest.approx(prefixes[m - 1].logprob, abs=1e-5)


def test_score_equals_naive_full_log_softmax(eng, monkeypatch):
    rs = reqs(4)
    # Shared prompts with single-token options (a judge's A/B), longer completions, an empty one.
    comps = ["A", "B", "the quick brown fox", "", "A", "hello there friend again"]
    rq = [rs[0], rs[0], rs[1], rs[2], rs[3], rs[3]]

    def naive(req, comp):
        p = eng._encode(req)
        c = eng.tokenizer(comp, add_special_tokens=False)["input_ids"]
        if not c:
            return 0.0
        with torch.no_grad():
            logp = torch.log_softmax(eng.model(torch.tensor([p + c])).logits[0].double(), -1)
        return float(sum(logp[len(p) - 1 + k, t] for k, t in enumerate(c)))

    want = [naive(r, c) for r, c in zip(rq, comps)]
    assert eng.score(rq, comps) == pytest.approx(want, abs=1e-5)
    monkeypatch.setattr(TransformersEngine, "SCORE_CHUNK_ELEMENTS", 3 * eng.model.config.vocab_size)
    assert eng.score(rq, comps) == pytest.approx(want, abs=1e-5)  # three positions per LM-head chunk
    assert eng.score(rq[:1], comps[:1]) == pytest.approx(want[:1], abs=1e-5)


# ----------------------------------------------------------------------------- continuous batching


# (Greedy decoding of the tiny random model repeats one token, so every row would end together.)
@pytest.mark.parametrize("sp", [{"temperature": 0.5, "eos": True}, {"temperature": 1.0, "top_p": 0.9, "eos": True},
                                {"temperature": 0.8, "stop": ("e", "ab")}])
def test_refilled_batches_equal_one_at_a_time(tiny_model, sp, monkeypatch):
    """Three slots for twelve rows of uneven prompts that end at different steps: rows leave and
    waiting prompts join mid-decode, and every row's text is still its one-at-a-time text."""
    from prefdata.engines import transformers as te

    small = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False, max_batch_size=3))
    sp = dict(sp)
    if sp.pop("eos", False):
        small.eos_ids = small.eos_ids | set(range(200, 200 + len(small.tokenizer) // 10))
    joins = []  # live rows at each admission: > 0 means prompts joined a batch already decoding
    admit = te._Decoder._admit
    monkeypatch.setattr(te._Decoder, "_admit", lambda d, free: (joins.append(len(d.at)), admit(d, free)))
    items = [(r, s) for r in reqs(6) for s in (0, 1)]
    params = SamplingParams(max_tokens=14, seed=9, logprobs=True, **sp)
    handed = []
    together = small.generate_samples(items, params, on_batch=lambda pos, comps: handed.extend(pos))
    assert sorted(handed) == list(range(len(items)))  # every row reached on_batch exactly once
    assert any(j > 0 for j in joins)
    alone = [eng_c[0] for eng_c in (small.generate_samples([it], params) for it in items)]
    assert [(c.text, c.num_tokens, c.finish_reason) for c in together] == \
        [(c.text, c.num_tokens, c.finish_reason) for c in alone]
    assert [c.logprob for c in together] == pytest.approx([c.logprob for c in alone], abs=1e-4)


def test_token_budget_bounds_the_refilled_cache(tiny_model, monkeypatch):
    """The batch's cache never holds more than token_budget rows x columns, refills included."""
    from prefdata.engines import kvcache

    budget = 256
    small = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False, token_budget=budget))
    small.eos_ids = small.eos_ids | set(range(200, 200 + len(small.tokenizer) // 10))
    sizes, joins = [], []
    update, extend = kvcache.SlotLayer.update, kvcache.SlotCache.extend

    def counting_update(layer, k, v, *a, **kw):
        keys, values = update(layer, k, v, *a, **kw)
        sizes.append(keys.shape[0] * keys.shape[2])
        return keys, values

    monkeypatch.setattr(kvcache.SlotLayer, "update", counting_update)
    monkeypatch.setattr(kvcache.SlotCache, "extend", lambda c, o: (joins.append(1), extend(c, o)))
    items = [(r, s) for r in reqs(8) for s in (0, 1)]
    out = small.generate_samples(items, SamplingParams(max_tokens=10, seed=1, temperature=1.0))
    assert all(c is not None for c in out)
    assert joins  # prompts joined running batches
    assert max(sizes) <= budget
    assert max(sizes) > budget // 2  # and the budget was what limited the batch


def test_slot_cache_pad_extend_trim_keep_each_rows_logits(tiny_model):
    """Joining a cache to a longer or shorter one, dropping rows and trimming columns no row sees
    change nothing a row computes: next-token logits equal each prompt's own."""
    from prefdata.engines.kvcache import SlotCache

    eng = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False))
    model = eng.model
    long_p, short_p = eng._encode(reqs(4)[3]), eng._encode(reqs(4)[0])
    assert len(long_p) > len(short_p) + 2

    def alone(p, extra):  # logits after the prompt, then after each extra token, one row, no padding
        ids = torch.tensor([p + extra])
        with torch.no_grad():
            return model(input_ids=ids).logits[0, len(p) - 1:]

    def prefill(p):
        cache = SlotCache()
        with torch.no_grad():
            model(input_ids=torch.tensor([p]), past_key_values=cache, use_cache=True)
        return cache

    def step(cache, toks, mask, pos):
        with torch.no_grad():
            return model(input_ids=torch.tensor(toks).view(-1, 1), attention_mask=mask, position_ids=pos,
                         past_key_values=cache, use_cache=True).logits[:, -1]

    for first, second in ((long_p, short_p), (short_p, long_p)):  # pad the newcomer, then the old cache
        a, b = prefill(first), prefill(second)
        width = max(len(first), len(second))
        for c, p in ((a, first), (b, second)):
            c.pad_left(width - len(p))
        a.extend(b)
        assert a.length() == width
        mask = torch.zeros((2, width + 1), dtype=torch.long)
        mask[0, width - len(first):] = 1
        mask[1, width - len(second):] = 1
        got = step(a, [7, 9], mask, torch.tensor([[len(first)], [len(second)]]))
        assert torch.allclose(got[0], alone(first, [7])[1], atol=1e-5)
        assert torch.allclose(got[1], alone(second, [9])[1], atol=1e-5)
        # Drop the first row; the second's padding columns are then seen by no row: trim them.
        a.batch_select_indices(torch.tensor([1]))
        lead = width - len(second)
        a.trim(lead)
        mask = mask[1:, lead:]
        assert a.length() == len(second) + 1
        for _ in range(70):  # past SlotLayer.GROW: the buffer is reallocated on the way
            mask = torch.cat([mask, torch.ones((1, 1), dtype=torch.long)], dim=1)
            got = step(a, [9], mask, torch.tensor([[mask.shape[1] - 1]]))
        ref = alone(second, [9] * 71)[-1]
        assert torch.allclose(got[0], ref, atol=1e-4)


def test_gqa_attention_equals_transformers_sdpa(tiny_model):
    """The engine's attention (grouped heads passed to SDPA as they are) gives transformers' sdpa
    logits on a left-padded batch; the tiny model has 4 query heads over 2 key/value heads."""
    from transformers import AutoModelForCausalLM

    from prefdata.engines.transformers import GQA_SDPA

    eng = TransformersEngine(EngineConfig(model=tiny_model, cache=False, progress=False))
    assert eng.model.config._attn_implementation == GQA_SDPA
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    assert ref.config.num_key_value_heads < ref.config.num_attention_heads
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        got = eng.model(input_ids=ids, attention_mask=mask).logits
        want = ref(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)
