"""KV storage for the engine: one sequence's while its prompt is prefilled, then a dense decode batch.

Both classes speak the one method Hugging Face attention layers call on a cache,
`update(key_states, value_states, layer_idx, ...) -> (keys, values)`, so the stock model forward
runs on them unchanged; the engine passes explicit position ids and 4-D masks, so nothing else
of the `Cache` interface is consulted.

Layout: one tensor per store, `[layers, 2 (k|v), rows, kv_heads, capacity, head_dim]`. A row is
a sequence; its first `length` positions are valid. Keeping every decoding sequence in one
contiguous tensor means a decode step attends over plain views (no per-step gather), which is
what makes batching pay on a CPU. Rows stay dense: a sequence that leaves is replaced by the
last row (one copy of that row's valid positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_GROW_TOKENS = 256  # capacity grows in these steps (then doubles), so reallocations are rare


@dataclass(frozen=True)
class KVShape:
    """What one token's KV looks like for a model."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model) -> "KVShape":
        cfg = model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        return cls(cfg.num_hidden_layers, kv_heads, head_dim, model.dtype, model.device)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    def empty(self, rows: int, capacity: int) -> torch.Tensor:
        return torch.zeros(self.layers, 2, rows, self.kv_heads, capacity, self.head_dim,
                           dtype=self.dtype, device=self.device)


class SequenceKV:
    """One sequence's KV while its prompt is prefilled, chunk by chunk (batch of one).

    `capacity` is the prompt length, known up front, so it never grows. A reused prefix is copied
    in with `load_prefix`; `length` counts the positions that hold valid KV.
    """

    def __init__(self, shape: KVShape, capacity: int):
        self.data = shape.empty(1, capacity)
        self.length = 0
        self._written = 0  # positions the forward in progress has written (per layer, same for all)

    def load_prefix(self, kv: torch.Tensor, n: int) -> None:
        """Start from the first `n` positions of a cached `[layers, 2, heads, len, dim]` tensor."""
        self.data[:, :, 0, :, :n] = kv[:, :, :, :n]
        self.length = n

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """HF hook: store this chunk's keys/values after the valid ones; return all valid ones."""
        end = self.length + key_states.shape[2]
        self.data[layer_idx, 0, :, :, self.length:end] = key_states
        self.data[layer_idx, 1, :, :, self.length:end] = value_states
        self._written = end
        return self.data[layer_idx, 0, :, :, :end], self.data[layer_idx, 1, :, :, :end]

    def commit(self) -> None:
        """The forward finished: the chunk it wrote is now valid."""
        self.length = self._written


class SlotKVCache:
    """The decode batch's KV: dense rows `0..rows-1`, each a running sequence, one token per step.

    Capacity (rows and positions) grows on demand up to `max_rows` / `max_len` and is released when
    the batch empties, so an idle model holds no KV.
    """

    def __init__(self, shape: KVShape, max_rows: int, max_len: int):
        self.shape = shape
        self.max_rows = max_rows
        self.max_len = max_len
        self.data: torch.Tensor | None = None
        self.lengths: list[int] = []  # valid positions per row; the row count is len(lengths)
        # set by decode_inputs for the forward that follows: where each row writes, and the width
        self._positions: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self._width = 0

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()

    def append(self, kv: SequenceKV) -> int:
        """Add a prefilled sequence as the last row; returns its row index."""
        row = self.rows
        self._reserve(row + 1, kv.length + 1)
        self.data[:, :, row, :, : kv.length] = kv.data[:, :, 0, :, : kv.length]
        self.lengths.append(kv.length)
        return row

    def remove(self, row: int) -> int | None:
        """Drop a row, moving the last row into its place. Returns the index the moved row had
        (its owner must update its row), or None if the removed row was the last."""
        last = self.rows - 1
        moved = None
        if row != last:
            n = self.lengths[last]
            self.data[:, :, row, :, :n] = self.data[:, :, last, :, :n]
            self.lengths[row] = n
            moved = last
        self.lengths.pop()
        if not self.lengths:
            self.data = None  # idle: give the memory back
        return moved

    def export(self, row: int) -> torch.Tensor:
        """A compact copy `[layers, 2, heads, len, dim]` of a row's valid KV (for the prefix cache)."""
        return self.data[:, :, row, :, : self.lengths[row]].clone()

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids `[rows, 1]` and the additive attention mask `[rows, 1, 1, T]` for one decode
        step, where T covers the longest row plus the token being fed. Reserves room for it."""
        width = self._width = max(self.lengths) + 1
        self._reserve(self.rows, width)
        device = self.shape.device
        self._positions = torch.tensor(self.lengths, device=device)
        self._index = torch.arange(self.rows, device=device)
        visible = torch.arange(width, device=device)[None, :] <= self._positions[:, None]
        mask = torch.zeros(visible.shape, dtype=self.shape.dtype, device=device)
        mask.masked_fill_(~visible, torch.finfo(self.shape.dtype).min)
        return self._positions[:, None], mask[:, None, None, :]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """HF hook for a decode step: write each row's new token at its own position, return the
        batch's keys/values up to the widest row (the mask hides each row's unused tail)."""
        keys, values = self.data[layer_idx, 0], self.data[layer_idx, 1]
        keys[self._index, :, self._positions] = key_states[:, :, 0]
        values[self._index, :, self._positions] = value_states[:, :, 0]
        return keys[: self.rows, :, : self._width], values[: self.rows, :, : self._width]

    def commit(self) -> None:
        """The decode forward finished: every row holds one more valid position."""
        self.lengths = [n + 1 for n in self.lengths]

    def _reserve(self, rows: int, length: int) -> None:
        have_rows, have_len = (0, 0) if self.data is None else (self.data.shape[2], self.data.shape[4])
        if rows <= have_rows and length <= have_len:
            return
        new_rows = max(rows, min(self.max_rows, max(4, 2 * have_rows))) if rows > have_rows else have_rows
        new_len = have_len
        if length > have_len:
            new_len = min(self.max_len, max(_round_up(length, _GROW_TOKENS), 2 * have_len))
            new_len = max(new_len, length)
        grown = self.shape.empty(new_rows, new_len)
        if self.data is not None:
            grown[:, :, :have_rows, :, :have_len] = self.data
        self.data = grown


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step
