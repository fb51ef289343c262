"""The running batch and its model calls: chunked prefill of one sequence, one decode forward for all.

Both run the model's own Hugging Face forward on the slotted KV cache (workers/kv_cache.py) with
explicit position ids and masks, so any decoder that honours those (Llama, Mistral, Qwen …
without sliding windows) is batched without model-specific code.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch

from workers.kv_cache import KVShape, SlotKVCache
from workers.sequence import Sequence


@dataclass
class StepPlan:
    """What one engine step runs: prompt chunks to prefill, and the sequences to decode."""

    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)
    decode: list[Sequence] = field(default_factory=list)
    speculate: list[Sequence] = field(default_factory=list)  # greedy sequences with a draft model


@dataclass
class StepOutput:
    prefill_logits: dict[int, torch.Tensor]  # id(sequence) -> logits after its prompt's last token
    decode_logits: dict[int, torch.Tensor]  # id(sequence) -> logits for its next token
    greedy: dict[int, int] = field(default_factory=dict)  # id(sequence) -> argmax, for greedy ones
    speculated: dict[int, list[int]] = field(default_factory=dict)  # id(sequence) -> tokens verified this step
    seconds: float = 0.0  # the prefill chunks and the batched decode
    speculate_seconds: dict[int, float] = field(default_factory=dict)  # id(sequence) -> its draft + verify time
    failed: list[tuple[Sequence, Exception]] = field(default_factory=list)
    refilled: set[int] = field(default_factory=set)  # id(sequence) of chunks that recomputed a preempted one's KV


class RunningBatch:
    """Every admitted sequence, one KV row each. A decode forward covers all rows: those still
    prefilling feed a placeholder that costs a row of compute and is overwritten by their prefill,
    which keeps rows dense and a sequence's KV in one place from admission to exit."""

    def __init__(self, shape: KVShape, max_rows: int, max_len: int, placeholder_token: int = 0,
                 max_bytes: int | None = None):
        self.cache = SlotKVCache(shape, max_rows, max_len, max_bytes)
        self.rows: list[Sequence] = []
        self._placeholder = placeholder_token

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, seq: Sequence, prefix: torch.Tensor | None = None, reused: int = 0) -> None:
        """Give a sequence a row sized for its prompt (or, refilling, its KV's tokens) and next
        token, starting from `reused` positions of a cached prefix."""
        seq.row = self.cache.add(len(seq.fill_ids) + 1)
        self.rows.append(seq)
        if reused:
            self.cache.load_prefix(seq.row, prefix, reused)
        seq.prefilled = reused

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Give `child` (admitted, empty row) a copy of `parent`'s prompt KV: n > 1 choices prefill once."""
        n = len(parent.prompt_ids)
        self.cache.load_prefix(child.row, self.cache.data[:, :, parent.row], n)
        child.prefilled = n

    def leave(self, seq: Sequence) -> None:
        moved = self.cache.remove(seq.row)
        last = self.rows.pop()
        if moved is not None:
            self.rows[seq.row] = last
            last.row = seq.row
        seq.row = None

    def export(self, seq: Sequence) -> torch.Tensor:
        """The KV of the tokens the sequence has fed (a speculative step that ended on a stop may
        hold KV for proposals after it)."""
        return self.cache.export(seq.row, len(seq.kv_tokens()))

    def prefill(self, model, seq: Sequence, n: int) -> torch.Tensor | None:
        """Feed the next `n` prompt tokens of `seq`. Returns the logits after the last prompt token
        when this chunk completes the prompt, else None. A refilling sequence's last chunk returns
        None too and ends its refill: its next token was sampled before it was preempted, so it
        decodes from that token at the next step."""
        start, tokens = seq.prefilled, seq.fill_ids
        logits = row_forward(model, self.cache, seq.row, tokens[start : start + n], keep=1)
        seq.prefilled = start + n
        if seq.prefilled < len(tokens):
            return None
        if seq.refilling:
            seq.refilling = False
            return None
        return logits[-1]

    def verify(self, model, seq: Sequence, tokens: list[int]) -> torch.Tensor:
        """Speculative decoding's check: feed a decoding sequence's last token plus draft proposals
        in one forward; logits `[len(tokens), vocab]`, one after each. The row then holds KV for
        all of them; `truncate` drops the rejected ones."""
        self.cache.reserve_length(self.cache.lengths[seq.row] + len(tokens))
        return row_forward(model, self.cache, seq.row, tokens, keep=len(tokens))

    def truncate(self, seq: Sequence, length: int) -> None:
        """Keep the first `length` positions of a row's KV (the rest is masked and overwritten)."""
        self.cache.lengths[seq.row] = length

    def decode(self, model, decoding: list[Sequence]) -> torch.Tensor:
        """One position for every row; returns logits [rows, vocab] in row order. The `decoding`
        rows feed their last sampled token; the others (prefilling, or verified speculatively this
        step) a placeholder whose KV is not kept."""
        fed = {id(s) for s in decoding}
        advanced = [id(s) in fed for s in self.rows]
        positions, mask = self.cache.decode_inputs()
        feed = [[s.output_ids[-1] if a else self._placeholder] for s, a in zip(self.rows, advanced)]
        ids = torch.tensor(feed, device=positions.device)
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                    **{cache_argument(model): self.cache})
        self.cache.commit(advanced)
        return out.logits[:, -1]


@functools.cache
def _cache_argument_of(model_class) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model) -> str:
    """The forward's keyword for a KV cache: `cache` in recent transformers, `past_key_values`
    before (an unknown keyword would be swallowed by **kwargs and the cache silently ignored)."""
    return _cache_argument_of(type(model))


def row_forward(model, cache: SlotKVCache, row: int, tokens: list[int], keep: int) -> torch.Tensor:
    """One forward of `tokens` after a row's valid KV, causally masked; the last `keep` logits
    `[keep, vocab]`. The row then holds KV for the tokens too."""
    start = cache.lengths[row]
    n = len(tokens)
    device = cache.shape.device
    dtype = cache.shape.dtype
    ids = torch.tensor([tokens], device=device)
    positions = torch.arange(start, start + n, device=device)
    # query i (absolute position start+i) sees keys 0..start+i
    visible = torch.arange(start + n, device=device)[None, :] <= positions[:, None]
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    view = cache.row_view(row)
    out = model(input_ids=ids, position_ids=positions[None, :], attention_mask=mask[None, None],
                use_cache=True, logits_to_keep=keep, **{cache_argument(model): view})
    view.commit()
    return out.logits[0]
