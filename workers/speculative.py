"""Speculative decoding: a small model drafts tokens, the served model verifies them in one forward.

For a greedy sequence whose route names a draft model (one that shares the served model's
tokenizer), each engine step goes: the draft proposes `k` tokens one at a time from its own KV
cache; the served model runs ONE forward over the sequence's last token plus the `k` proposals
on the sequence's KV row and takes its own argmax at every position; proposals are accepted
while they equal that argmax, and the served model's argmax after the last accepted proposal is
emitted as well. A step therefore emits 1..k+1 tokens, every one of them the served model's own
greedy choice: the output is exactly what the served model alone produces, and the draft only
decides how many of those tokens one forward of the large model yields (Leviathan et al. 2023;
Chen et al. 2023, greedy case).

Only greedy sequences are speculated. A sampled sequence's tokens come from its own seeded
generator (workers/sampling.py); speculative sampling would keep their distribution but not the
tokens a seed gives, and a seed must give the same answer whether or not a route speculates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.batching import row_forward
from workers.kv_cache import KVShape, SlotKVCache


def tokenizers_match(a, b) -> bool:
    """Whether two tokenizers map every string to the same ids (the draft's proposals are ids)."""
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


@dataclass
class DraftState:
    """One sequence's draft: the draft model, its KV cache, and how many tokens to propose."""

    model: object
    tokens: int
    cache: SlotKVCache | None = None  # the draft model's KV for this sequence: one row
    covered: list[int] = field(default_factory=list)  # the tokens the draft cache holds KV for

    def propose(self, context: list[int], k: int) -> list[int]:
        """The draft's greedy continuation of `context` (prompt + everything emitted), `k` tokens.
        Feeds the draft only what its cache lacks: usually the one token the last verify added."""
        if self.cache is None:
            context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
            self.cache = SlotKVCache(KVShape.of(self.model), max_rows=1, max_len=context_length)
            self.cache.add(len(context) + k)
        keep = _common_prefix(self.covered, context, limit=len(context) - 1)  # >= 1 token is fed
        del self.covered[keep:]
        self.cache.lengths[0] = keep  # drop the KV of proposals the served model rejected
        self.cache.reserve_length(len(context) + k)
        feed = context[keep:]
        out: list[int] = []
        while len(out) < k:
            logits = row_forward(self.model, self.cache, 0, feed, keep=1)
            self.covered.extend(feed)
            token = int(logits[-1].argmax())
            out.append(token)
            feed = [token]
        return out


def accepted_prefix(proposals: list[int], target_argmax: list[int]) -> list[int]:
    """The tokens one verify step emits: the proposals the served model agrees with, then the
    served model's own token after them. `target_argmax[i]` is its choice after proposal i-1."""
    n = 0
    while n < len(proposals) and proposals[n] == target_argmax[n]:
        n += 1
    return proposals[:n] + [target_argmax[n]]


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b[:limit]):
        if x != y:
            break
        n += 1
    return n
