"""LedgerBuffer: no usage record is lost when the store is briefly unavailable or the gateway dies.

The gateway settles through the buffer. With a SettlementJournal (gateway/store/journal.py),
``record()`` makes a settlement durable in the journal and applies it to the store in the
background, so the client is answered without waiting for the store; each journal entry is
released once the store has it, and what a dead gateway journaled and never applied is recovered
(``recover()``) by the next one. Without a journal the caller awaits ``settle()`` itself. A settle that fails with StoreUnavailable is queued in
memory and replayed in the background with exponential backoff and jitter; settle is idempotent
per request id, so a replay of a settle that did reach the store is harmless. The queue is
bounded: when full, the oldest entry is dropped (and counted) rather than growing without limit.
Queued entries live in process memory; with a journal they are also on disk, so a gateway that
dies during an outage (or drops them from a full queue) leaves them to be recovered; without
one they are lost, and their reservations are released by the store's TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable

from gateway.store.errors import StoreUnavailable
from gateway.store.journal import Segment, SettlementJournal
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
    - ``journal_errors``: settlements that could not be journaled (settled before answering instead)
    """

    def __init__(self, store: Store, *, max_pending: int = 10_000, initial_backoff_s: float = 0.05,
                 max_backoff_s: float = 5.0, journal: SettlementJournal | None = None) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._store = store
        self.max_pending = max_pending
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self.journal = journal
        self._queue: deque[tuple[Reservation, UsageRecord, Segment | None]] = deque()
        self._applying: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._in_flight: Reservation | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self.buffered = 0
        self.replayed = 0
        self.dropped = 0
        self.journal_errors = 0

    @property
    def pending(self) -> int:
        """Settlements waiting for the store."""
        return len(self._queue)

    def record(self, reservation: Reservation, record: UsageRecord,
               done: Callable[[bool | None | BaseException], None] | None = None) -> bool:
        """Journal one settlement and apply it in the background: True once it is durable (the
        client may be answered). False without a journal, or when the journal cannot be written:
        the caller then awaits ``settle()`` itself. ``done`` gets what applying it returned
        (True, False, None as for ``settle``) or the exception the store refused it with."""
        if self.journal is None:
            return False
        try:
            segment = self.journal.append(reservation, record)
        except OSError as exc:
            self.journal_errors += 1
            log.error("could not journal usage record %s (%s); settling it before answering",
                      record.request_id, exc)
            return False
        self._apply_later(reservation, record, segment, done)
        return True

    def recover(self) -> int:
        """Apply, in the background, what dead gateways journaled and never applied."""
        if self.journal is None:
            return 0
        entries = self.journal.recover()
        for reservation, record, segment in entries:
            self._apply_later(reservation, record, segment, None)
        return len(entries)

    def _apply_later(self, reservation: Reservation, record: UsageRecord, segment: Segment,
                     done: Callable | None) -> None:
        task = asyncio.get_running_loop().create_task(self._apply(reservation, record, segment, done))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)

    async def _apply(self, reservation: Reservation, record: UsageRecord, segment: Segment,
                     done: Callable | None) -> None:
        try:
            outcome = await self.settle(reservation, record, segment)
        except Exception as exc:  # the store refused it; settle() released it
            log.error("usage record %s rejected by the store: %s", record.request_id, exc)
            self.dropped += 1
            outcome = exc
        if done is not None:
            done(outcome)

    async def caught_up(self) -> None:
        """Wait until every settlement recorded so far has been tried against the store (applied,
        or queued because the store is down): what this process answered is visible to the
        reads and reservations that follow."""
        if self._applying:
            await asyncio.gather(*list(self._applying), return_exceptions=True)

    async def settle(self, reservation: Reservation, record: UsageRecord,
                     segment: Segment | None = None) -> bool | None:
        """Settle now if possible. True: applied; False: already settled; None: queued.
        ``segment``: the journal entry to release once the store has the record.

        While earlier entries are queued the store is presumed down, so new ones queue directly
        instead of each request waiting for its own timeout.
        """
        if not self._queue:
            try:
                outcome = await self._store.settle(reservation, record)
            except StoreUnavailable as exc:
                log.warning("store unavailable, buffering usage record %s: %s",
                            record.request_id, exc)
            except Exception:
                self._release(segment)  # refused: replaying it later would not help
                raise
            else:
                self._release(segment)
                return outcome
        self._enqueue(reservation, record, segment)
        return None

    def _release(self, segment: Segment | None) -> None:
        if segment is not None and self.journal is not None:
            self.journal.release(segment)

    def _enqueue(self, reservation: Reservation, record: UsageRecord, segment: Segment | None) -> None:
        while len(self._queue) >= self.max_pending:
            # Evict the oldest entry that is not being replayed right now. Its journal entry
            # (if any) is kept: the next gateway to start recovers it.
            in_flight = len(self._queue) > 1 and self._queue[0][0] is self._in_flight
            _, lost, kept = self._queue[1] if in_flight else self._queue[0]
            del self._queue[1 if in_flight else 0]
            self.dropped += 1
            log.error("ledger buffer full (%d): dropped usage record %s%s", self.max_pending,
                      lost.request_id, " from memory (kept in the journal)" if kept else "")
        self._queue.append((reservation, record, segment))
        self.buffered += 1
        self._drained.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._replay(),
                                                                name="muxgate-ledger-replay")

    async def _replay(self) -> None:
        backoff = self._initial_backoff_s
        while self._queue:
            reservation, record, segment = self._queue[0]
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
                if self._pop(reservation):
                    self._release(segment)
                self.dropped += 1
                continue
            if self._pop(reservation):
                self._release(segment)
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
        """Wait until everything recorded so far is in the store and the queue is empty; False
        if ``timeout_s`` passed first."""
        async def drained():
            await self.caught_up()
            await self._drained.wait()

        try:
            await asyncio.wait_for(drained(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout_s: float = 5.0) -> int:
        """Try to drain for up to ``timeout_s``, then stop. Returns how many records were lost:
        not in the store and not in a journal (journaled ones stay on disk for the next start)."""
        await self.flush(timeout_s)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._applying):  # still waiting on the store after the timeout
            task.cancel()
        if self._applying:
            await asyncio.gather(*list(self._applying), return_exceptions=True)
        lost = sum(1 for _, _, segment in self._queue if segment is None)
        if lost:
            log.error("ledger buffer closed with %d usage records not written", lost)
            self.dropped += lost
        self._queue.clear()
        if self.journal is not None:
            left = self.journal.close()
            if left:
                log.warning("%d journaled usage records not yet in the store; the next gateway to "
                            "start on %s applies them", left, self.journal.directory)
        return lost
