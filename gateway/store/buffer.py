"""LedgerBuffer: no usage record is lost when the store is briefly unavailable.

The gateway settles through the buffer. A settle that fails with StoreUnavailable is queued in
memory and replayed in the background with exponential backoff and jitter; settle is idempotent
per request id, so a replay of a settle that did reach the store is harmless. The queue is
bounded: when full, the oldest entry is dropped (and counted) rather than growing without limit.
Queued entries live in process memory: a gateway that dies during an outage loses them, and
their reservations are released by the store's TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque

from gateway.store.errors import StoreUnavailable
from gateway.store.protocol import Store
from gateway.store.records import Reservation, UsageRecord

log = logging.getLogger("muxgate.store.buffer")


class LedgerBuffer:
    """Settle-through buffer with background replay. Counters are plain attributes for metrics:

    - ``buffered``: settlements queued because the store was unavailable (cumulative)
    - ``replayed``: queued settlements later written to the store (cumulative)
    - ``dropped``: settlements given up on: evicted by a full queue, or rejected by the store
      with a non-retryable error during replay (cumulative)
    - ``pending``: settlements queued right now
    """

    def __init__(self, store: Store, *, max_pending: int = 10_000, initial_backoff_s: float = 0.05,
                 max_backoff_s: float = 5.0) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._store = store
        self.max_pending = max_pending
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._queue: deque[tuple[Reservation, UsageRecord]] = deque()
        self._task: asyncio.Task | None = None
        self._in_flight: Reservation | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self.buffered = 0
        self.replayed = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Settlements waiting for the store."""
        return len(self._queue)

    async def settle(self, reservation: Reservation, record: UsageRecord) -> bool | None:
        """Settle now if possible. True: applied; False: already settled; None: queued.

        While earlier entries are queued the store is presumed down, so new ones queue directly
        instead of each request waiting for its own timeout.
        """
        if not self._queue:
            try:
                return await self._store.settle(reservation, record)
            except StoreUnavailable as exc:
                log.warning("store unavailable, buffering usage record %s: %s",
                            record.request_id, exc)
        self._enqueue(reservation, record)
        return None

    def _enqueue(self, reservation: Reservation, record: UsageRecord) -> None:
        while len(self._queue) >= self.max_pending:
            # Evict the oldest entry that is not being replayed right now.
            in_flight = len(self._queue) > 1 and self._queue[0][0] is self._in_flight
            _, lost = self._queue[1] if in_flight else self._queue[0]
            del self._queue[1 if in_flight else 0]
            self.dropped += 1
            log.error("ledger buffer full (%d): dropped usage record %s", self.max_pending,
                      lost.request_id)
        self._queue.append((reservation, record))
        self.buffered += 1
        self._drained.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._replay(),
                                                                name="muxgate-ledger-replay")

    async def _replay(self) -> None:
        backoff = self._initial_backoff_s
        while self._queue:
            reservation, record = self._queue[0]
            self._in_flight = reservation
            try:
                await self._store.settle(reservation, record)
            except StoreUnavailable:
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            except Exception:  # a bad record must not block the ones behind it
                log.exception("dropping usage record %s: the store rejected it",
                              record.request_id)
                self._pop(reservation)
                self.dropped += 1
                continue
            if self._pop(reservation):
                self.replayed += 1
            backoff = self._initial_backoff_s
        self._in_flight = None
        self._drained.set()

    def _pop(self, reservation: Reservation) -> bool:
        """Remove the head entry if it is still the one just handled (eviction may have won)."""
        if self._queue and self._queue[0][0] is reservation:
            self._queue.popleft()
            return True
        return False

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until the queue is empty; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout_s: float = 5.0) -> int:
        """Try to drain for up to ``timeout_s``, then stop. Returns how many records were lost."""
        await self.flush(timeout_s)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = len(self._queue)
        if lost:
            log.error("ledger buffer closed with %d usage records not written", lost)
            self.dropped += lost
            self._queue.clear()
        return lost
