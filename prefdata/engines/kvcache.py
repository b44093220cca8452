"""A KV cache the transformers engine can refill: rows leave and join mid-decode.

transformers' DynamicCache appends each step by `torch.cat`, which copies every layer's whole cache
once per generated token; at 64 rows x 200 positions that copy costs about as much memory traffic as
the step's matmuls. `SlotLayer` keeps keys and values in a buffer with spare columns, so a step writes
one column in place and the buffer is reallocated only every `GROW` steps. It also supports what
continuous batching needs:

- `batch_select_indices(rows)`: drop finished rows;
- `pad_left(p)`: add p masked columns in front, so a cache can be aligned with a longer one;
- `trim(c)`: forget the first c columns once every remaining row has them masked, so the cache's
  length follows the rows still in it instead of growing for the whole run;
- `extend(other)`: append another cache's rows (same length) in the batch dimension.

All rows share one column index (the attention mask says which columns each row may see), exactly as
in a left-padded batch; nothing here changes what a row computes. Only plain full-attention layers
are handled: `supports(config)` says whether a model qualifies, and the engine falls back to
transformers' own cache (and batches that never refill) for sliding-window or hybrid models.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


def supports(config) -> bool:
    """Whether every decoder layer of this model is full attention with a plain KV cache."""
    cfg = config.get_text_config()
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    window = getattr(cfg, "sliding_window", None)
    return not window or getattr(cfg, "use_sliding_window", True) is False


class SlotLayer(DynamicLayer):
    GROW = 64  # spare columns per (re)allocation: the whole-cache copy happens once per GROW steps

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.buf_k = self.buf_v = None
        self.start = self.end = 0  # the live columns are buf[:, :, start:end]

    def _view(self) -> None:
        self.keys = self.buf_k[:, :, self.start:self.end]
        self.values = self.buf_v[:, :, self.start:self.end]

    def _realloc(self, left: int, right: int, rows: int | None = None) -> None:
        """Copy the live columns into a new zeroed buffer with `left` columns before them and room
        for `right` more after (zeros, so padded columns are finite: masked, never NaN)."""
        n, (b, h, _, d) = self.end - self.start, self.buf_k.shape
        new_k = self.buf_k.new_zeros(b, h, left + n + right + self.GROW, d)
        new_v = torch.zeros_like(new_k)
        new_k[:, :, left:left + n] = self.keys
        new_v[:, :, left:left + n] = self.values
        self.buf_k, self.buf_v, self.start, self.end = new_k, new_v, 0, left + n

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        t = key_states.shape[-2]
        if self.buf_k is None:
            b, h, _, d = key_states.shape
            self.buf_k = key_states.new_zeros(b, h, t + self.GROW, d)
            self.buf_v = torch.zeros_like(self.buf_k)
        elif self.end + t > self.buf_k.shape[2]:
            self._realloc(0, t)
        self.buf_k[:, :, self.end:self.end + t] = key_states
        self.buf_v[:, :, self.end:self.end + t] = value_states
        self.end += t
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buf_k is not None:
            self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
            self._view()

    def pad_left(self, p: int) -> None:
        if p <= 0 or self.buf_k is None:
            return
        if self.start >= p:  # room in front already: zero it and widen the view
            self.buf_k[:, :, self.start - p:self.start] = 0
            self.buf_v[:, :, self.start - p:self.start] = 0
            self.start -= p
        else:
            self._realloc(p, 0)
        self._view()

    def trim(self, c: int) -> None:
        if c > 0 and self.buf_k is not None:
            self.start += c
            self._view()

    def extend(self, other: SlotLayer) -> None:
        assert other.end - other.start == self.end - self.start, "align lengths first (pad_left)"
        n = self.end - self.start
        b = self.buf_k.shape[0] + other.buf_k.shape[0]
        new_k = self.buf_k.new_zeros(b, self.buf_k.shape[1], n + self.GROW, self.buf_k.shape[3])
        new_v = torch.zeros_like(new_k)
        new_k[:, :, :n] = torch.cat([self.keys, other.keys], dim=0)
        new_v[:, :, :n] = torch.cat([self.values, other.values], dim=0)
        self.buf_k, self.buf_v, self.start, self.end = new_k, new_v, 0, n
        self._view()


class SlotCache(Cache):
    """A cache of `SlotLayer`s, created lazily one per decoder layer as the model calls `update`."""

    def __init__(self):
        super().__init__(layer_class_to_replicate=SlotLayer)

    def length(self) -> int:
        return self.layers[0].end - self.layers[0].start if self.layers else 0

    def pad_left(self, p: int) -> None:
        for layer in self.layers:
            layer.pad_left(p)

    def trim(self, c: int) -> None:
        for layer in self.layers:
            layer.trim(c)

    def extend(self, other: SlotCache) -> None:
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.extend(theirs)
