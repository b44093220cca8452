"""The transformers engine: the embedded CPU default.

Generation runs its own decode loop over the model's KV cache instead of `model.generate`, for one
reason: every (request, sample) row samples from its own counter-based random stream, keyed by a seed
drawn from the request's content, seed and sample index (prefdata/engines/sampling.py). A row's text
therefore does not depend on which other rows share its batch, on batch order or on the token budget,
which is what makes cached, resumed and re-batched runs agree row for row. All rows sample in one
vectorised op per step; EOS and stop checks are vectorised over the batch.
"""

from __future__ import annotations

import time

import torch

from prefdata.engines import kvcache
from prefdata.engines.base import ChatRequest, Completion, SamplingParams, row_seed
from prefdata.engines.sampling import sample, stream_keys, uniforms
from prefdata.errors import PrefdataError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}

GQA_SDPA = "prefdata_gqa_sdpa"


def _gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention without its key/value copy. With a padding mask it repeats every
    grouped key/value head to the query heads (`repeat_kv`, for CUDA kernels that lack masked GQA)
    on every layer and step: for SmolLM2 (9 query heads over 3) that copies the KV cache three times
    over per token. torch's CPU SDPA takes the groups as they are (`enable_gqa`), with the same result."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.shape[1] == query.shape[1] or query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(query.shape[2] > 1 and attention_mask is None and causal), enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_SDPA, _gqa_sdpa)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)


def _model_fingerprint(path: str, name: str) -> str:
    """A model id for cache keys and lineage: the name, plus the weights' identity for local dirs
    (`prefdata.models.model_fingerprint`), so replacing a checkpoint in place never serves stale
    cached text."""
    from prefdata.models import model_fingerprint

    return f"{name}#{model_fingerprint(path)[:12]}"


class TransformersEngine:
    name = "transformers"
    # The sampler's identity: the same request gives other text under another one, so a cache
    # must not replay text across it (see the report of issue 14: CachedEngine.cache_id).
    sampler_version = "splitmix64-counter-v1"
    SCORE_CHUNK_ELEMENTS = 1 << 23  # logits per LM-head chunk in score(): 32 MiB of float32 at most

    def __init__(self, cfg):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from prefdata.models import resolve_model

        self.cfg = cfg
        path = resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.dtype],
                                                              trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise PrefdataError(f"cannot load model '{cfg.model}' from {path}: {str(e).splitlines()[0]}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise PrefdataError(f"model '{cfg.model}' has no chat template; prefdata sends chat messages")
        self.model.eval()
        if getattr(self.model.config, "_attn_implementation", None) == "sdpa":
            _register_attention()
            self.model.set_attn_implementation(GQA_SDPA)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos + [self.tokenizer.eos_token_id] if e is not None}
        self.model_id = _model_fingerprint(path, cfg.model)
        self.stats = {"generated_tokens": 0, "requests": 0}

    # ------------------------------------------------------------------ prompts

    def _encode(self, req: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text + req.assistant_prefix, add_special_tokens=False)["input_ids"]

    def _batches(self, lengths: list[int], new_tokens: int) -> list[list[int]]:
        """Indices grouped into batches, longest prompts first, each within the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, cur, cur_max = [], [], 0
        for i in order:
            m = max(cur_max, lengths[i])
            if cur and ((len(cur) + 1) * (m + new_tokens) > self.cfg.token_budget
                        or len(cur) >= self.cfg.max_batch_size):
                batches.append(cur)
                cur, m = [], lengths[i]
            cur.append(i)
            cur_max = m
        if cur:
            batches.append(cur)
        return batches

    # ------------------------------------------------------------------ generation

    def generate_samples(self, items: list[tuple[ChatRequest, int]], params: SamplingParams,
                         on_batch=None) -> list[Completion]:
        """Continuous batching: up to max_batch_size rows decode together; when a quarter of them
        have finished, they leave the KV cache and waiting prompts are prefilled and join, so the
        batch stays full instead of idling until its longest row ends (Yu et al., "Orca", OSDI 2022,
        call it iteration-level scheduling). A row's text depends only on its prompt, seed and own
        step count, never on when it joined or who shares its batch."""
        from prefdata.progress import progress_bar

        ids = [self._encode(r) for r, _ in items]
        seeds = [row_seed(r, params, s) for r, s in items]
        out: list[Completion | None] = [None] * len(items)
        t0, produced = time.time(), 0
        with progress_bar("generate", len(items), disable=not self.cfg.progress) as advance:
            def finished(rows: list[int], comps: list[Completion]) -> None:
                nonlocal produced
                for i, c in zip(rows, comps):
                    out[i] = c
                if on_batch is not None:
                    on_batch(rows, comps)
                produced += sum(c.num_tokens for c in comps)
                advance(len(rows), note=f"{produced / max(time.time() - t0, 1e-6):.0f} tok/s")

            if items and params.max_tokens < 1:  # nothing to generate: every row ends by length at once
                finished(list(range(len(items))), [Completion(text="", finish_reason="length", num_tokens=0,
                                                              logprob=0.0 if params.logprobs else None)
                                                   for _ in items])
            elif items:
                _Decoder(self, ids, seeds, params, finished).run()
        self.stats["generated_tokens"] += produced
        self.stats["requests"] += len(items)
        return out  # type: ignore[return-value]

    def _tokens_covering(self, tokens: list[int], n_chars: int) -> int:
        """The fewest leading tokens whose text spans the first n_chars characters (a token that
        straddles the cut counts: part of it is in the text)."""
        for m in range(len(tokens) + 1):
            if len(self.tokenizer.decode(tokens[:m], skip_special_tokens=True)) >= n_chars:
                return m
        return len(tokens)

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        """Sum log p(completion tokens | chat prompt), batched by length.

        The input that scores a completion is prompt + completion[:-1] (the last token is only a
        target), so pairs that share it share one forward: a judge's "A" and "B" after one prompt."""
        from prefdata.progress import progress_bar

        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}  # input ids -> [(pair, targets)]
        for i, (r, c) in enumerate(zip(requests, completions)):
            comp = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            if comp:  # an empty completion scores 0
                groups.setdefault(tuple(self._encode(r) + comp[:-1]), []).append((i, comp))
        inputs = list(groups)
        scores = [0.0] * len(requests)
        with progress_bar("score", len(requests), disable=not self.cfg.progress) as advance:
            advance(len(requests) - sum(len(g) for g in groups.values()))
            for batch in self._batches([len(x) for x in inputs], 0):
                self._score_batch([inputs[j] for j in batch], [groups[inputs[j]] for j in batch], scores)
                advance(sum(len(groups[inputs[j]]) for j in batch))
        return scores

    def _score_batch(self, seqs: list[tuple[int, ...]], members: list[list[tuple[int, list[int]]]],
                     scores: list[float]) -> None:
        """Fill scores[i] for every pair of one length-sorted batch of distinct inputs.

        Only the positions that predict a completion token go through the LM head, in chunks of at
        most SCORE_CHUNK_ELEMENTS logits, and each takes a logsumexp and a gather: memory stays
        bounded by the chunk, never (b, t, vocab)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, s in enumerate(seqs):
            ids[k, width - len(s):] = torch.tensor(s)
            mask[k, width - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Rows of the flattened (b * width) hidden states each pair needs: its completion is predicted
        # by the last len(targets) positions of its (right-aligned) input.
        at: dict[int, int] = {}  # flat hidden row -> index into the selected rows
        sel, tgt, owner = [], [], []  # per target token: selected row, token id, pair
        for k, group in enumerate(members):
            for i, comp in group:
                for j, t in enumerate(comp):
                    flat = k * width + width - len(comp) + j
                    sel.append(at.setdefault(flat, len(at)))
                    tgt.append(t)
                    owner.append(i)
        rows = torch.tensor(list(at))  # (n,)
        hidden = self._hidden(ids, mask, positions)  # (b, width, h), or None: no separable LM head
        if hidden is None:  # this model's own head, on every position
            logits_all = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            picked, head = logits_all.reshape(-1, logits_all.shape[-1])[rows], None  # (n, vocab)
        else:
            picked, head = hidden.reshape(-1, hidden.shape[-1])[rows], self.model.get_output_embeddings()  # (n, h)
        lse = torch.empty(len(rows), dtype=torch.float64)
        gathered = torch.empty(len(sel), dtype=torch.float64)
        sel_t, tgt_t = torch.tensor(sel), torch.tensor(tgt)
        step = max(1, self.SCORE_CHUNK_ELEMENTS // self.model.config.get_text_config().vocab_size)
        for lo in range(0, len(rows), step):
            chunk = picked[lo:lo + step]
            logits = (chunk if head is None else head(chunk)).float()  # (chunk, vocab)
            lse[lo:lo + step] = torch.logsumexp(logits, dim=-1).double()
            here = (sel_t >= lo) & (sel_t < lo + step)
            gathered[here] = logits[sel_t[here] - lo, tgt_t[here]].double()
        lp = gathered - lse[sel_t]  # (tokens,) log p(target | prefix)
        total = torch.zeros(len(scores), dtype=torch.float64).index_add_(0, torch.tensor(owner), lp)
        for i in set(owner):
            scores[i] = float(total[i])

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """Final hidden states (b, t, h) when the model's logits are exactly its output embedding of
        them (Llama-like heads); None for heads that also scale or soft-cap, which then run whole."""
        cfg = self.model.config.get_text_config()
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        if (decoder is None or decoder is self.model or self.model.get_output_embeddings() is None
                or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
            return None
        return decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state


class _Decoder:
    """One `generate_samples` call's decode loop: a queue of prompts, a live batch of slots.

    Each slot holds one (request, sample) row. A row's t-th token is drawn with the uniform of its own
    stream at its own step t (not the loop's), so joining late changes nothing it computes. The loop:
    admit waiting prompts when a quarter of the slots are free (one prefill for all of them, their
    cache left-padded to the batch's length or the batch's to theirs), decode one token for every
    live row, and retire the finished rows once a quarter of the batch has ended (one `on_batch` call
    for them: the request cache commits per call)."""

    def __init__(self, eng: TransformersEngine, prompts: list[list[int]], seeds: list[int],
                 params: SamplingParams, finished):
        self.eng, self.p, self.prompts, self.finished = eng, params, prompts, finished
        n, t = len(prompts), params.max_tokens
        self.queue = sorted(range(n), key=lambda i: len(prompts[i]))  # pop() takes the longest
        self.keys = stream_keys(seeds)
        self.eos = torch.tensor(sorted(eng.eos_ids), dtype=torch.long)
        # Per row; a row grows until it stops and never after, so tokens[r, :n_gen[r]] is its output.
        self.tokens = torch.zeros((n, t), dtype=torch.long)
        self.token_lp = torch.zeros((n, t), dtype=torch.float64)  # per token: a stop cut drops the tail's
        self.n_gen = torch.zeros(n, dtype=torch.long)
        self.stopped = torch.zeros(n, dtype=torch.bool)  # ended by EOS or a stop string, not the length
        # Per slot of the live batch.
        self.at = torch.zeros(0, dtype=torch.long)  # the row in each slot
        self.steps = torch.zeros(0, dtype=torch.long)  # tokens sampled so far
        self.done = torch.zeros(0, dtype=torch.bool)
        self.cur = torch.zeros((0, 1), dtype=torch.long)  # the next input token
        self.pos = torch.zeros((0, 1), dtype=torch.long)  # and its position
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # (slots, cache columns)
        self.refill = kvcache.supports(eng.model.config)
        self.cache = None

    @torch.inference_mode()  # no autograd graph: without it every step's graph stays alive through the cache
    def run(self) -> None:
        slots = self.eng.cfg.max_batch_size
        while self.queue or len(self.at):
            free = slots - len(self.at)
            if self.queue and (not len(self.at) or (self.refill and free >= max(1, slots // 4))):
                self._admit(free)
            if bool((~self.done).any()):
                self._step()
            n_done = int(self.done.sum())
            if n_done and (n_done == len(self.at) or n_done >= max(1, len(self.at) // 4)):
                self._retire()

    def _admit(self, free: int) -> None:
        """Prefill the longest waiting prompts that fit the slots and the token budget, and join them."""
        t, cols, live = self.p.max_tokens, self.mask.shape[1], len(self.at)
        w = len(self.prompts[self.queue[-1]])
        width = max(cols, w)
        # The batch's cache may grow to this many columns before every row now in it has ended: the
        # newcomers end at most t columns after joining; old rows' first columns are kept until they end.
        first = int(self.mask.argmax(-1).min()) + width - cols if live else width
        span = width + t - min(first, width - w)
        k = min(free, len(self.queue), max(self.eng.cfg.token_budget // span - live, 0 if live else 1))
        if k == 0:
            return
        rows = [self.queue.pop() for _ in range(k)]
        ids = torch.full((k, w), self.eng.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((k, w), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, w - len(self.prompts[r]):] = torch.tensor(self.prompts[r])
            mask[j, w - len(self.prompts[r]):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = kvcache.SlotCache() if self.refill else None
        # Only the last position's logits are ever used: in the prefill that saves w - 1 rows of
        # (k, vocab) LM-head output (the LM head is a fifth of SmolLM2's matmul parameters).
        out = self.eng.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        at = torch.tensor(rows)
        steps, done = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.bool)
        nxt = self._sample(out.logits[:, -1, :].float(), at, steps, done)
        if not live:
            self.cache, self.mask = out.past_key_values, mask
        else:
            if width > cols:
                self.cache.pad_left(width - cols)
                self.mask = torch.cat([torch.zeros((live, width - cols), dtype=torch.long), self.mask], dim=1)
            if width > w:
                cache.pad_left(width - w)
                mask = torch.cat([torch.zeros((k, width - w), dtype=torch.long), mask], dim=1)
            self.cache.extend(cache)
            self.mask = torch.cat([self.mask, mask])
        self.at, self.steps = torch.cat([self.at, at]), torch.cat([self.steps, steps])
        self.done = torch.cat([self.done, done])
        self.cur = torch.cat([self.cur, nxt.view(-1, 1)])
        self.pos = torch.cat([self.pos, pos[:, -1:] + 1])

    def _step(self) -> None:
        """One token for every live slot (finished slots not yet retired ride along, ignored)."""
        self.mask = torch.cat([self.mask, torch.ones((len(self.at), 1), dtype=torch.long)], dim=1)
        out = self.eng.model(input_ids=self.cur, attention_mask=self.mask, position_ids=self.pos,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        nxt = self._sample(out.logits[:, -1, :].float(), self.at, self.steps, self.done)
        self.cur, self.pos = nxt.view(-1, 1), self.pos + 1

    def _sample(self, logits: torch.Tensor, at: torch.Tensor, steps: torch.Tensor, done: torch.Tensor):
        """Sample each slot's next token at its own step, record it, and mark the slots that ended
        (EOS, a stop string, or max_tokens). Updates steps and done in place."""
        p = self.p
        nxt = sample(logits, uniforms(self.keys[at.numpy()], steps.numpy()), p.temperature, p.top_p)
        live = (~done).nonzero().squeeze(-1)
        rows, step = at[live], steps[live]
        self.tokens[rows, step] = nxt[live]
        if p.logprobs:
            chosen = logits[live].gather(-1, nxt[live].unsqueeze(-1)).squeeze(-1)
            self.token_lp[rows, step] = (chosen - torch.logsumexp(logits[live], dim=-1)).double()
        eos = torch.isin(nxt[live], self.eos)
        self.n_gen[rows[~eos]] += 1
        steps[live] += 1
        ended = eos | (steps[live] >= p.max_tokens)
        if p.stop:
            # Decode the tail only: a stop string can't start earlier than ~its length back.
            grow, n = rows[~eos], step[~eos] + 1
            lo = (n - 16).clamp(min=0)
            tails = self.eng.tokenizer.batch_decode(
                [self.tokens[r, a:b].tolist() for r, a, b in zip(grow.tolist(), lo.tolist(), n.tolist())],
                skip_special_tokens=True)
            hit = torch.zeros(len(live), dtype=torch.bool)
            hit[(~eos).nonzero().squeeze(-1)] = torch.tensor([any(s in t for s in p.stop) for t in tails],
                                                             dtype=torch.bool)
            ended |= hit
            eos = eos | hit
        self.stopped[rows[eos]] = True
        done[live[ended]] = True
        return nxt

    def _retire(self) -> None:
        """Hand the finished rows over and drop them from the batch and its cache."""
        gone, keep = self.at[self.done].tolist(), (~self.done).nonzero().squeeze(-1)
        self.finished(gone, self._completions(gone))
        if len(keep) < len(self.at):
            self.cache.batch_select_indices(keep)
            self.at, self.steps, self.done = self.at[keep], self.steps[keep], self.done[keep]
            self.cur, self.pos, self.mask = self.cur[keep], self.pos[keep], self.mask[keep]
        if self.refill and len(self.at):
            # Columns no remaining row can see: forget them, so the cache follows the rows in it.
            lead = int(self.mask.argmax(-1).min())
            if lead:
                self.cache.trim(lead)
                self.mask = self.mask[:, lead:]
        if not len(self.at):
            self.cache, self.mask = None, self.mask[:, :0]

    def _completions(self, rows: list[int]) -> list[Completion]:
        eng, p = self.eng, self.p
        n_list = self.n_gen[rows].tolist()
        generated = [self.tokens[r, :n].tolist() for r, n in zip(rows, n_list)]
        texts = eng.tokenizer.batch_decode(generated, skip_special_tokens=True)
        kept = list(n_list)
        finish = ["stop" if s else "length" for s in self.stopped[rows].tolist()]
        for k, full in enumerate(texts):
            hit = min((full.find(s) for s in p.stop if s in full), default=-1)
            if hit >= 0:
                texts[k], finish[k] = full[:hit], "stop"
                kept[k] = eng._tokens_covering(generated[k], hit)
        # num_tokens and logprob describe the returned text: the stop string and what followed it
        # were generated but cut, so they must not count (a judge's logprob would mix in the tail).
        upto = torch.arange(p.max_tokens) < torch.tensor(kept).unsqueeze(-1)
        lps = (self.token_lp[rows] * upto).sum(-1).tolist()
        return [Completion(text=texts[k], finish_reason=finish[k], num_tokens=kept[k],
                           logprob=lps[k] if p.logprobs else None) for k in range(len(rows))]
