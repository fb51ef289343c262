"""Which idle resident model to evict when a load needs room.

GreedyDual-Size-Frequency (Cherkasova 1998) keeps models whose reload is expensive relative to
the bytes they hold and that are asked for often; plain byte-LRU is there for comparison.
Both only ever see idle candidates: the pool never offers a model with requests in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Entry:
    size: int  # device bytes the model holds
    cost: float  # seconds to bring it back if evicted (its tier's measured load time)
    frequency: int = 0
    last_used: int = 0
    priority: float = 0.0


class EvictionPolicy(Protocol):
    name: str

    def touch(self, model: str, size: int, cost: float) -> None: ...

    def victim(self, candidates: list[str]) -> str: ...


class LRUPolicy:
    name = "lru"

    def __init__(self):
        self.entries: dict[str, Entry] = {}
        self._clock = 0

    def touch(self, model: str, size: int, cost: float) -> None:
        self._clock += 1
        e = self.entries.setdefault(model, Entry(size, cost))
        e.size, e.cost, e.last_used = size, cost, self._clock
        e.frequency += 1

    def victim(self, candidates: list[str]) -> str:
        return min(candidates, key=lambda m: self.entries[m].last_used if m in self.entries else -1)


class GDSFPolicy(LRUPolicy):
    """priority = L + frequency * cost / size; evict the lowest; L rises to the evicted priority,
    so models not used for a while age out even if they were once popular."""

    name = "gdsf"

    def __init__(self):
        super().__init__()
        self.inflation = 0.0
        self._frequency: dict[str, int] = {}  # survives eviction: popularity is the model's, not the copy's

    def touch(self, model: str, size: int, cost: float) -> None:
        super().touch(model, size, cost)
        self._frequency[model] = self._frequency.get(model, 0) + 1
        e = self.entries[model]
        e.priority = self.inflation + self._frequency[model] * max(cost, 1e-6) / max(size, 1)

    def victim(self, candidates: list[str]) -> str:
        chosen = min(candidates, key=lambda m: (self.entries[m].priority if m in self.entries else -1.0,
                                                self.entries[m].last_used if m in self.entries else -1))
        if chosen in self.entries:
            self.inflation = max(self.inflation, self.entries[chosen].priority)
        return chosen


def make_policy(name: str) -> EvictionPolicy:
    policies = {"gdsf": GDSFPolicy, "lru": LRUPolicy}
    if name not in policies:
        raise ValueError(f"unknown eviction policy {name!r}; use one of {sorted(policies)}")
    return policies[name]()
