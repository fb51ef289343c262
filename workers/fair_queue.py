"""Weighted fair queuing of waiting requests by team: self-clocked fair queuing (SCFQ).

Each request carries an opaque team id and a weight (the team's share; default 1: equal shares).
Its cost is the work it may ask for (the engine passes prompt + max new tokens, times its
choices). A request is tagged when it arrives:

    finish = max(V, the team's last finish tag) + cost / weight

and requests leave in tag order; V, the queue's virtual time, is the largest tag served so far.
A team that sends faster than its share has tags running ahead of V, so another team's new
request (tagged from V) goes before its backlog: over a busy period each team is served in
proportion to its weight. Every tag is finite and V only grows, so a team over its share waits,
but each of its requests is reached after a bounded amount of others' work: none starves.

`priority` (per route) multiplies the weight by 2**priority for that request: a share, not a
strict level, so a low-priority route still progresses under a flood of high-priority ones.

No torch, no threads: the engine's scheduler holds its own lock around it.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


def effective_weight(weight: float, priority: int = 0) -> float:
    """A request's share in the fair queue: its team's weight times 2**priority (the replica's
    bounded queue splits its room by the same number)."""
    return max(weight, 1e-6) * 2.0 ** priority


class FairQueue(Generic[T]):
    """Items in fair order (`iter`); `take` removes one that is served, `drop` one that is not."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, T]] = []  # (finish tag, arrival number, item), sorted
        self._tags: dict[int, float] = {}  # id(item) -> its tag
        self._last_finish: dict[str, float] = {}  # team -> finish tag of its latest request
        self._arrivals = itertools.count()
        self.virtual = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter([item for _, _, item in self._entries])  # a copy: callers take while iterating

    def push(self, item: T, team: str | None, cost: float, weight: float = 1.0, priority: int = 0) -> float:
        """Queue `item` for `team` (None: one shared anonymous team); returns its finish tag."""
        share = effective_weight(weight, priority)
        start = max(self.virtual, self._last_finish.get(team, 0.0))
        tag = start + max(cost, 1.0) / share
        self._last_finish[team] = tag
        if len(self._last_finish) > 4 * len(self._entries) + 64:  # teams whose tags V passed have no credit left
            self._last_finish = {t: f for t, f in self._last_finish.items() if f > self.virtual}
        entry = (tag, next(self._arrivals), item)
        bisect.insort(self._entries, entry, key=lambda e: e[:2])
        self._tags[id(item)] = tag
        return tag

    def take(self, item: T) -> None:
        """`item` is served (admitted): it leaves and the virtual time reaches its tag."""
        self.virtual = max(self.virtual, self._remove(item))

    def drop(self, item: T) -> None:
        """`item` leaves unserved (cancelled): the clock does not move."""
        self._remove(item)

    def clear(self) -> list[T]:
        items = list(self)
        self._entries.clear()
        self._tags.clear()
        return items

    def _remove(self, item: T) -> float:
        tag = self._tags.pop(id(item))
        for i in range(bisect.bisect_left(self._entries, tag, key=lambda e: e[0]), len(self._entries)):
            if self._entries[i][2] is item:
                del self._entries[i]
                return tag
        raise KeyError("item not queued")
