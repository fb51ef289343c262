"""Reuse of finished sequences' KV: an LRU of token prefixes, bounded by bytes.

An agent's next step, or a chat's next turn, sends the previous prompt plus the previous answer
plus something new. When a sequence finishes, the engine files its KV here under the tokens it
covers (prompt + answer); a new prompt that starts with those tokens copies that KV and prefills
only the rest.

Lookup is by a chain of block hashes: h(i+1) = hash(h(i), tokens of block i), one per full block of
`block` tokens, so the deepest block a prompt shares with any entry is found in O(prompt length);
from there the match is extended token by token inside that entry (matches need not end on a
block boundary; retokenized answers often diverge mid-block). Tokens are compared for real, so a
hash collision can cost a miss, never a wrong reuse.

Every entry carries a salt (the gateway gives each team's requests the team's id, as vLLM's
`cache_salt`): the chain starts from the salt and a match needs the same salt, so one team's
prompts never reuse, or time the presence of, another team's KV.

Thread-safe: the scheduler thread inserts and looks up; routing asks `match_length` from others.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    tokens: list[int]
    kv: torch.Tensor  # [layers, 2, heads, len(tokens), head_dim]
    hashes: list[int]
    salt: str | None = None

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Token prefix -> KV, least recently used evicted first once `max_bytes` is exceeded."""

    def __init__(self, max_bytes: int, block: int = 16):
        self.max_bytes = max_bytes
        self.block = block
        self.nbytes = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # id -> entry, LRU first
        self._by_hash: dict[int, dict[int, None]] = {}  # block hash -> ids of entries holding it (ordered)
        self._next_id = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: list[int], limit: int | None = None,
               salt: str | None = None) -> tuple[int, torch.Tensor | None]:
        """Longest cached prefix of `tokens` (at most `limit` tokens) filed under the same `salt`:
        (length, its KV) or (0, None). The KV tensor may be longer than the match; use its first
        `length` positions. Counts as a use."""
        with self._lock:
            found = self._find(tokens, len(tokens) if limit is None else limit, salt)
            if found is None:
                return 0, None
            entry_id, length = found
            self._entries.move_to_end(entry_id)
            return length, self._entries[entry_id].kv

    def match_length(self, tokens: list[int], salt: str | None = None) -> int:
        """How many leading tokens of `tokens` are cached under `salt` (no side effects; for routing)."""
        with self._lock:
            found = self._find(tokens, len(tokens), salt)
            return 0 if found is None else found[1]

    def insert(self, tokens: list[int], kv: torch.Tensor, salt: str | None = None) -> None:
        """File a finished sequence's KV under `salt`. Entries it extends (same salt, their tokens
        a prefix of these) are dropped: the new one serves every prompt they could."""
        if len(tokens) < self.block or self.max_bytes <= 0:
            return
        entry = _Entry(list(tokens), kv, self._hashes(tokens, salt), salt)
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            for old_id in self._covered_by(entry):
                self._drop(old_id)
            entry_id = self._next_id
            self._next_id += 1
            self._entries[entry_id] = entry
            for h in entry.hashes:
                self._by_hash.setdefault(h, {})[entry_id] = None
            self.nbytes += entry.nbytes
            while self.nbytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            for entry_id in list(self._entries):
                self._drop(entry_id)

    # ---- internals (lock held) ---------------------------------------------------------------

    def _hashes(self, tokens: list[int], salt: str | None) -> list[int]:
        out, h = [], hash(salt)
        for start in range(0, len(tokens) - self.block + 1, self.block):
            h = hash((h, tuple(tokens[start : start + self.block])))
            out.append(h)
        return out

    def _find(self, tokens: list[int], limit: int, salt: str | None) -> tuple[int, int] | None:
        hashes = self._hashes(tokens[:limit], salt)
        for depth in range(len(hashes), 0, -1):
            holders = self._by_hash.get(hashes[depth - 1])
            if not holders:
                continue
            boundary = depth * self.block
            for entry_id in reversed(holders):  # most recently inserted first
                entry = self._entries[entry_id]
                if entry.salt != salt or entry.tokens[:boundary] != tokens[:boundary]:
                    continue  # hash collision
                return entry_id, _common_prefix(entry.tokens, tokens, boundary, limit)
        return None

    def _covered_by(self, new: _Entry) -> list[int]:
        if not new.hashes:
            return []
        holders = self._by_hash.get(new.hashes[0], {})
        return [i for i in holders
                if self._entries[i].salt == new.salt and len(self._entries[i].tokens) <= len(new.tokens)
                and new.tokens[: len(self._entries[i].tokens)] == self._entries[i].tokens]

    def _drop(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self.nbytes -= entry.nbytes
        for h in entry.hashes:
            holders = self._by_hash.get(h)
            if holders is not None:
                holders.pop(entry_id, None)
                if not holders:
                    del self._by_hash[h]


def _common_prefix(a: list[int], b: list[int], start: int, limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = start
    while i < n and a[i] == b[i]:
        i += 1
    return i
