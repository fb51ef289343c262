"""The engine's KV storage: one slotted tensor, a row per admitted sequence.

Layout: `[layers, 2 (k|v), rows, kv_heads, capacity, head_dim]`. A row is a sequence; its first
`lengths[row]` positions hold valid KV. Keeping every sequence in one contiguous tensor means a
decode step attends over plain views (no per-step gather of pages), which is what makes batching
pay on a CPU; a sequence gets its row when admitted and prefills straight into it, so its KV is
never copied between stores. Rows stay dense: a sequence that leaves is replaced by the last row
(one copy of that row's valid positions).

Both ways in speak the one method Hugging Face attention layers call on a cache,
`update(key_states, value_states, layer_idx, ...) -> (keys, values)`, so the stock model forward
runs on them unchanged; the engine passes explicit position ids and 4-D masks, so nothing else
of the `Cache` interface is consulted.
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

    def zeros(self, rows: int, capacity: int) -> torch.Tensor:
        return torch.zeros(self.layers, 2, rows, self.kv_heads, capacity, self.head_dim,
                           dtype=self.dtype, device=self.device)


class SlotKVCache:
    """Dense rows `0..rows-1`, one per sequence. Capacity (rows and positions) grows on demand up
    to `max_rows` / `max_len`, and never past `max_bytes` (growth ahead of need is clamped to it;
    the engine admits sequences so that need never exceeds it); `release` gives it back once no
    row is left."""

    def __init__(self, shape: KVShape, max_rows: int, max_len: int, max_bytes: int | None = None):
        self.shape = shape
        self.max_rows = max_rows
        self.max_len = max_len
        self.max_bytes = max_bytes
        self.peak_nbytes = 0  # the largest allocation so far
        self.data: torch.Tensor | None = None
        self.lengths: list[int] = []  # valid positions per row; the row count is len(lengths)
        self.reserved: list[int] = []  # positions promised to each row when it was added (its prompt)
        # set by decode_inputs for the forward that follows: where each row writes, and the width
        self._flat_index: torch.Tensor | None = None
        self._width = 0
        self._steady: tuple | None = None  # (rows, capacity, row offsets, position range) of the last decode step

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()

    # ---- rows ---------------------------------------------------------------------------------

    def add(self, reserve: int) -> int:
        """A new empty row with room for `reserve` positions; returns its index."""
        row = self.rows
        self._reserve(row + 1, reserve)
        self.lengths.append(0)
        self.reserved.append(reserve)
        return row

    def load_prefix(self, row: int, kv: torch.Tensor, n: int) -> None:
        """Start a row from the first `n` positions of a `[layers, 2, heads, len, dim]` tensor."""
        self.data[:, :, row, :, :n] = kv[:, :, :, :n]
        self.lengths[row] = n

    def remove(self, row: int) -> int | None:
        """Drop a row, moving the last row into its place. Returns the index the moved row had
        (its owner must update its row), or None if the removed row was the last."""
        last = self.rows - 1
        moved = None
        if row != last:
            n = self.lengths[last]
            self.data[:, :, row, :, :n] = self.data[:, :, last, :, :n]
            self.lengths[row] = n
            self.reserved[row] = self.reserved[last]
            moved = last
        self.lengths.pop()
        self.reserved.pop()
        return moved

    def export(self, row: int, length: int | None = None) -> torch.Tensor:
        """A compact copy `[layers, 2, heads, len, dim]` of a row's valid KV (for the prefix cache),
        or of its first `length` positions."""
        n = self.lengths[row] if length is None else min(length, self.lengths[row])
        return self.data[:, :, row, :, :n].clone()

    def reserve_length(self, length: int) -> None:
        """Room for `length` positions in every row (a multi-token forward on one row needs it)."""
        self._reserve(self.rows, length)

    def release(self) -> None:
        """Give the storage back (only when no row is left)."""
        if not self.lengths:
            self.data = None

    # ---- prefill: one row, a chunk of positions ----------------------------------------------

    def row_view(self, row: int) -> "RowKV":
        return RowKV(self, row)

    # ---- decode: every row, one position each -----------------------------------------------

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids `[rows, 1]` and the additive attention mask `[rows, 1, 1, T]` for one decode
        step, where T covers the longest row plus the token being fed. Reserves room for it."""
        width = self._width = max(self.lengths) + 1
        self._reserve(self.rows, width)
        device = self.shape.device
        positions = torch.tensor(self.lengths, device=device)[:, None]
        heads, capacity = self.shape.kv_heads, self.data.shape[4]
        if self._steady is None or self._steady[:2] != (self.rows, capacity):
            # row r, head h writes at flat position ((r * heads + h) * capacity + length_r) of a
            # layer's keys; the offsets and the position range change only with rows or capacity
            base = (torch.arange(self.rows, device=device)[:, None] * heads + torch.arange(heads, device=device)) * capacity
            self._steady = (self.rows, capacity, base, torch.arange(capacity, device=device)[None, :])
        base, span = self._steady[2], self._steady[3]
        self._flat_index = (base + positions).flatten()
        hidden = span[:, :width] > positions  # positions past each row's token
        mask = hidden.to(self.shape.dtype) * torch.finfo(self.shape.dtype).min
        return positions, mask[:, None, None, :]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """HF hook for a decode step: write each row's new token at its own position, return the
        batch's keys/values up to the widest row (the mask hides each row's unused tail)."""
        dim = self.shape.head_dim
        keys, values = self.data[layer_idx, 0], self.data[layer_idx, 1]
        keys.view(-1, dim).index_copy_(0, self._flat_index, key_states.reshape(-1, dim))
        values.view(-1, dim).index_copy_(0, self._flat_index, value_states.reshape(-1, dim))
        return keys[: self.rows, :, : self._width], values[: self.rows, :, : self._width]

    def commit(self, advanced: list[bool]) -> None:
        """The decode forward finished: rows that fed a real token hold one more valid position
        (the others fed a placeholder, which their prefill will overwrite)."""
        self.lengths = [n + 1 if a else n for n, a in zip(self.lengths, advanced)]

    def _reserve(self, rows: int, length: int) -> None:
        have_rows, have_len = (0, 0) if self.data is None else (self.data.shape[2], self.data.shape[4])
        if rows <= have_rows and length <= have_len:
            return
        new_rows = max(rows, min(self.max_rows, 2 * have_rows)) if rows > have_rows else have_rows
        new_len = have_len
        if length > have_len:
            new_len = max(length, min(self.max_len, max(_round_up(length, _GROW_TOKENS), 2 * have_len)))
        if self.max_bytes is not None and self._bytes(new_rows, new_len) > self.max_bytes:
            # no room to grow ahead: exactly what is needed now (rows in use, and the positions
            # rows hold or were promised for their prompts)
            new_rows = max(rows, self.rows)
            new_len = max(length, *self.lengths, *self.reserved, 0)
            if self._bytes(new_rows, new_len) > self.max_bytes:
                raise RuntimeError(f"KV cache needs {self._bytes(new_rows, new_len)} bytes, over its "
                                   f"budget of {self.max_bytes}")
        # zeroed, not empty: masked positions are still multiplied (by 0), and garbage may be NaN
        grown = self.shape.zeros(new_rows, new_len)
        if self.data is not None:
            keep_rows, keep_len = min(have_rows, new_rows), min(have_len, new_len)
            grown[:, :, :keep_rows, :, :keep_len] = self.data[:, :, :keep_rows, :, :keep_len]
        self.data = grown
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def _bytes(self, rows: int, length: int) -> int:
        return rows * length * self.shape.bytes_per_token


class RowKV:
    """HF cache adapter for prefilling one row: a chunk's keys/values go after the row's valid
    ones; attention sees all of them. `commit` makes the chunk valid once the forward is done."""

    def __init__(self, cache: SlotKVCache, row: int):
        self.cache = cache
        self.row = row
        self.start = cache.lengths[row]
        self.end = self.start

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        data = self.cache.data
        self.end = self.start + key_states.shape[2]
        data[layer_idx, 0, self.row, :, self.start : self.end] = key_states[0]
        data[layer_idx, 1, self.row, :, self.start : self.end] = value_states[0]
        keys = data[layer_idx, 0, self.row : self.row + 1, :, : self.end]
        values = data[layer_idx, 1, self.row : self.row + 1, :, : self.end]
        return keys, values

    def commit(self) -> None:
        self.cache.lengths[self.row] = self.end


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step
