"""The transformers engine: the embedded CPU default.

Generation runs its own decode loop over the model's KV cache instead of `model.generate`, for one
reason: every (request, sample) row draws from its own `torch.Generator`, seeded from the request's
content, seed and sample index. A row's text therefore does not depend on which other rows share its
batch, on batch order or on the token budget, which is what makes cached, resumed and re-batched
runs agree row for row.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from prefdata.engines.base import ChatRequest, Completion, SamplingParams, row_seed
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
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        generated: list[list[int]] = [[] for _ in range(b)]
        token_lp: list[list[float]] = [[] for _ in range(b)]  # per token, so a stop cut can drop the tail's
        done = [False] * b
        finish = ["length"] * b
        texts = [""] * b
        past = None
        cur_ids, positions = input_ids, (mask.cumsum(-1) - 1).clamp(min=0)
        for step in range(params.max_tokens):
            # Only the last position's logits are ever used: in the prefill that saves width - 1 rows
            # of (b, vocab) lm-head output (the LM head is a fifth of SmolLM2's matmul parameters).
            outputs = self.model(input_ids=cur_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=past, use_cache=True, logits_to_keep=1)
            past = outputs.past_key_values
            logits = outputs.logits[:, -1, :].float()  # (b, vocab)
            logp = torch.log_softmax(logits, dim=-1)
            nxt = self._sample(logits, gens, params, done)
            for k in range(b):
                if done[k]:
                    continue
                tok = int(nxt[k])
                if tok in self.eos_ids:
                    done[k], finish[k] = True, "stop"
                    continue
                generated[k].append(tok)
                token_lp[k].append(float(logp[k, tok]))
                if params.stop:
                    # Decode the tail only: a stop string can't start earlier than ~its length back.
                    tail = self.tokenizer.decode(generated[k][-16:], skip_special_tokens=True)
                    if any(s in tail for s in params.stop):
                        done[k], finish[k] = True, "stop"
            if all(done):
                break
            cur_ids = nxt.view(b, 1)
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
        kept = [len(g) for g in generated]
        for k in range(b):
            full = self.tokenizer.decode(generated[k], skip_special_tokens=True)
            hit = min((full.find(s) for s in params.stop if s in full), default=-1)
            if hit >= 0:
                full, finish[k] = full[:hit], "stop"
                kept[k] = self._tokens_covering(generated[k], hit)
            texts[k] = full
        # num_tokens and logprob describe the returned text: the stop string and what followed it
        # were generated but cut, so they must not count (a judge's logprob would mix in the tail).
        return texts, finish, kept, [sum(lp[:n]) for lp, n in zip(token_lp, kept)]

    def _tokens_covering(self, tokens: list[int], n_chars: int) -> int:
        """The fewest leading tokens whose text spans the first n_chars characters (a token that
        straddles the cut counts: part of it is in the text)."""
        for m in range(len(tokens) + 1):
            if len(self.tokenizer.decode(tokens[:m], skip_special_tokens=True)) >= n_chars:
                return m
        return len(tokens)

    @staticmethod
    def _sample(logits: torch.Tensor, gens: list[torch.Generator], params: SamplingParams, done: list[bool]):
        if params.temperature <= 0:
            return logits.argmax(dim=-1)
        if params.top_p < 1.0:
            from prefdata.engines.sampling import TOP_K_PREFILTER, _nucleus

            z = logits / params.temperature
            z_top, idx = z.topk(TOP_K_PREFILTER, dim=-1)
            p_top, spills = _nucleus(z_top, torch.logsumexp(z, -1, keepdim=True), params.top_p)
            if not bool(spills.any()):  # every nucleus ends inside the top k: no full sort
                return torch.stack([idx[k, torch.multinomial(p_top[k], 1, generator=g)[0]]
                                    for k, g in enumerate(gens)])
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < params.top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        out = torch.empty(len(gens), dtype=torch.long)
        for k, g in enumerate(gens):
            # Each row draws from its own generator, even when finished, so a row's stream of
            # draws never depends on its neighbours.
            out[k] = torch.multinomial(probs[k], 1, generator=g)[0]
        return out

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(self, requests: list[ChatRequest], completions: list[str]) -> list[float]:
        """Sum log p(completion tokens | chat prompt), batched by length."""
        from prefdata.progress import progress_bar

        pairs = []
        for r, c in zip(requests, completions):
            p = self._encode(r)
            comp = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            pairs.append((p, comp))
        scores = [0.0] * len(pairs)
        with progress_bar("score", len(pairs), disable=not self.cfg.progress) as advance:
            for batch in self._batches([len(p) + len(c) for p, c in pairs], 0):
                self._score_batch(pairs, batch, scores)
                advance(len(batch))
        return scores

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]], batch: list[int], scores: list[float]) -> None:
        """Fill scores[i] for the rows of one length-sorted batch."""
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, s in enumerate(seqs):
            ids[k, width - len(s):] = torch.tensor(s)
            mask[k, width - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask, position_ids=positions)
                                 .logits.float(), dim=-1)  # (b, t, vocab)
        for k, i in enumerate(batch):
            n_comp = len(pairs[i][1])
            if n_comp == 0:
                continue
            tgt = ids[k, width - n_comp:]  # completion tokens
            pred = logp[k, width - n_comp - 1: width - 1]  # the positions that predict them
            scores[i] = float(pred.gather(-1, tgt.unsqueeze(-1)).sum())
