"""The transformers engine: the embedded CPU default.

Generation runs its own decode loop over the model's KV cache instead of `model.generate`, for one
reason: every (request, sample) row samples from its own counter-based random stream, keyed by a seed
drawn from the request's content, seed and sample index (prefdata/engines/sampling.py). A row's text
therefore does not depend on which other rows share its batch, on batch order or on the token budget,
which is what makes cached, resumed and re-batched runs agree row for row. All rows sample in one
vectorised op per step; EOS and stop checks are vectorised over the batch.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from prefdata.engines.base import ChatRequest, Completion, SamplingParams, row_seed
from prefdata.engines.sampling import sample, stream_keys, uniforms
from prefdata.errors import PrefdataError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _model_fingerprint(path: str, name: str) -> str:
    """A model id for cache keys and lineage: the name, plus the weights' identity for local dirs,
    so replacing a checkpoint in place never serves stale cached text."""
    p = Path(path)
    parts = []
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + [p / "config.json"]:
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    info = p / "prefdata-model.json"
    if info.is_file():  # the embedded model: its recorded checksum is the better identity
        parts = [json.loads(info.read_text()).get("weights_sha256", "")]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"{name}#{digest}"


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
        from prefdata.progress import progress_bar

        ids = [self._encode(r) for r, _ in items]
        seeds = [row_seed(r, params, s) for r, s in items]
        out: list[Completion | None] = [None] * len(items)
        batches = self._batches([len(x) for x in ids], params.max_tokens)
        t0, produced = time.time(), 0
        with progress_bar("generate", len(items), disable=not self.cfg.progress) as advance:
            for batch in batches:
                texts, finishes, ntoks, lps = self._decode([ids[i] for i in batch], [seeds[i] for i in batch], params)
                for j, i in enumerate(batch):
                    out[i] = Completion(text=texts[j], finish_reason=finishes[j], num_tokens=ntoks[j],
                                        logprob=lps[j] if params.logprobs else None)
                if on_batch is not None:
                    on_batch(batch, [out[i] for i in batch])
                produced += sum(ntoks)
                advance(len(batch), note=f"{produced / max(time.time() - t0, 1e-6):.0f} tok/s")
        self.stats["generated_tokens"] += produced
        self.stats["requests"] += len(items)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _decode(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams):
        pad = self.tokenizer.pad_token_id
        b, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for k, p in enumerate(prompts):
            input_ids[k, width - len(p):] = torch.tensor(p)
            mask[k, width - len(p):] = 1
        keys = stream_keys(seeds)  # each row's counter-based stream: its draws depend on (seed, step) only
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long)
        # A row grows until it stops and never after, so tokens[k, :n_gen[k]] is its output.
        tokens = torch.zeros((b, params.max_tokens), dtype=torch.long)
        token_lp = torch.zeros((b, params.max_tokens), dtype=torch.float64)  # per token: a stop cut drops the tail's
        n_gen = torch.zeros(b, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        stopped = torch.zeros(b, dtype=torch.bool)  # ended by EOS or a stop string rather than the length
        past = None
        at = torch.arange(b)  # the original row of each row still in the batch
        cur_ids, positions = input_ids, (mask.cumsum(-1) - 1).clamp(min=0)
        for step in range(params.max_tokens):
            # Only the last position's logits are ever used: in the prefill that saves width - 1 rows
            # of (b, vocab) lm-head output (the LM head is a fifth of SmolLM2's matmul parameters).
            outputs = self.model(input_ids=cur_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=past, use_cache=True, logits_to_keep=1)
            past = outputs.past_key_values
            logits = outputs.logits[:, -1, :].float()  # (rows in the batch, vocab)
            nxt = sample(logits, uniforms(keys[at.numpy()], step), params.temperature, params.top_p)  # (live,)
            live = ~done[at]  # (live,) rows finished since the last compaction still ride along
            hit_eos = live & torch.isin(nxt, eos)
            tokens[at, step] = nxt
            if params.logprobs:
                chosen = logits.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
                token_lp[at, step] = (chosen - torch.logsumexp(logits, dim=-1)).double()
            grow = at[live & ~hit_eos]
            n_gen[grow] += 1
            done[at[hit_eos]] = True
            stopped[at[hit_eos]] = True
            if params.stop and len(grow):
                # Decode the tail only: a stop string can't start earlier than ~its length back. Every
                # growing row has step + 1 tokens, so the tails are one slice.
                tails = self.tokenizer.batch_decode(tokens[grow, max(0, step - 15):step + 1].tolist(),
                                                    skip_special_tokens=True)
                hit = grow[torch.tensor([any(s in t for s in params.stop) for t in tails])]
                done[hit] = True
                stopped[hit] = True
            keep = ~done[at]  # (live,)
            if not bool(keep.any()):
                break
            if int(keep.sum()) <= 3 * len(at) // 4:
                # A quarter of the batch has finished: drop those rows from the KV cache rather than
                # compute them to the end. Each remaining row's own computation is unchanged.
                idx = keep.nonzero().squeeze(-1)
                past.batch_select_indices(idx)
                at, nxt, mask, positions = at[idx], nxt[idx], mask[idx], positions[idx]
            cur_ids = nxt.view(-1, 1)
            mask = torch.cat([mask, torch.ones((len(at), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
        n_list = n_gen.tolist()
        generated = [tokens[k, :n].tolist() for k, n in enumerate(n_list)]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        kept = list(n_list)
        finish = ["stop" if s else "length" for s in stopped.tolist()]
        for k, full in enumerate(texts):
            hit = min((full.find(s) for s in params.stop if s in full), default=-1)
            if hit >= 0:
                texts[k], finish[k] = full[:hit], "stop"
                kept[k] = self._tokens_covering(generated[k], hit)
        # num_tokens and logprob describe the returned text: the stop string and what followed it
        # were generated but cut, so they must not count (a judge's logprob would mix in the tail).
        kept_t = torch.tensor(kept)
        lps = (token_lp * (torch.arange(params.max_tokens) < kept_t.unsqueeze(-1))).sum(-1).tolist()
        return texts, finish, kept, lps

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
