"""LedgerBuffer: usage records survive a store outage; the queue is bounded."""

from __future__ import annotations

import sqlite3

import pytest
from store_testkit import HAVE_REDIS_SERVER, T0, FlakyStore, RedisServer, acme_reservations, usage_for

from gateway.store import InvalidInput, LedgerBuffer, RedisStore, SQLiteStore, StoreUnavailable

pytestmark = pytest.mark.anyio


async def test_failed_settles_are_replayed(backend):
    store = backend.open()
    reservations = await acme_reservations(store, 5)
    flaky = FlakyStore(store, failures=3)
    buffer = LedgerBuffer(flaky, initial_backoff_s=0.001, max_backoff_s=0.01)
    results = [await buffer.settle(r, usage_for(r, cost_usd="0.25")) for r in reservations]
    assert results == [None] * 5            # the first failed; the rest queued behind it
    assert await buffer.flush(timeout_s=30)
    assert (buffer.buffered, buffer.replayed, buffer.dropped, buffer.pending) == (5, 5, 0, 0)
    assert len(await store.usage_records(0, 2**32)) == 5
    spend = await store.spend("acme")
    assert (spend.spent_usd, spend.reserved_usd) == (5 * usage_for(reservations[0],
                                                     cost_usd="0.25").cost_usd, 0)
    # Healthy again: settles go straight through.
    more = await _more_reservation(store)
    assert await buffer.settle(more, usage_for(more)) is True
    assert buffer.buffered == 5


async def _more_reservation(store):
    principal = await store.lookup((await store.create_key("acme")).secret)
    return await store.reserve(principal, "small", "0.5", 100)


async def test_queue_is_bounded_and_drops_the_oldest(backend):
    store = backend.open()
    reservations = await acme_reservations(store, 5)
    flaky = FlakyStore(store, failures=10**9)
    buffer = LedgerBuffer(flaky, max_pending=3, initial_backoff_s=0.001, max_backoff_s=0.005)
    for r in reservations:
        assert await buffer.settle(r, usage_for(r)) is None
    assert (buffer.buffered, buffer.dropped, buffer.pending) == (5, 2, 3)
    flaky.failures = 0
    assert await buffer.flush(timeout_s=30)
    assert buffer.replayed == 3
    kept = {r.request_id for r in await store.usage_records(0, 2**32)}
    assert kept == {r.id for r in reservations[2:]}


async def test_rejected_records_do_not_block_the_queue(backend):
    store = backend.open()
    reservations = await acme_reservations(store, 2)
    flaky = FlakyStore(store, failures=1)
    buffer = LedgerBuffer(flaky, initial_backoff_s=0.001)
    await buffer.settle(reservations[0], usage_for(reservations[0]))
    flaky.failures, flaky.error = 1, InvalidInput("bad record")  # the replay is rejected
    await buffer.settle(reservations[1], usage_for(reservations[1]))
    assert await buffer.flush(timeout_s=30)
    assert (buffer.replayed, buffer.dropped) == (1, 1)


async def test_aclose_reports_what_could_not_be_written(backend):
    store = backend.open()
    [reservation] = await acme_reservations(store, 1)
    buffer = LedgerBuffer(FlakyStore(store, failures=10**9), initial_backoff_s=0.001,
                          max_backoff_s=0.005)
    await buffer.settle(reservation, usage_for(reservation))
    assert await buffer.aclose(timeout_s=0.05) == 1
    assert (buffer.dropped, buffer.pending) == (1, 0)


async def test_replay_after_sqlite_is_locked_by_another_process(tmp_path):
    path = tmp_path / "muxgate.db"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    try:
        [reservation] = await acme_reservations(store, 1)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")      # another process holds the write lock
        buffer = LedgerBuffer(store, initial_backoff_s=0.01, max_backoff_s=0.05)
        record = usage_for(reservation, cost_usd="0.3")
        assert await buffer.settle(reservation, record) is None
        assert buffer.pending == 1
        blocker.execute("COMMIT")
        blocker.close()
        assert await buffer.flush(timeout_s=30)
        assert buffer.replayed == 1
        assert await store.usage_records(0, 2**32) == [record]
    finally:
        await store.close()


@pytest.mark.skipif(not HAVE_REDIS_SERVER, reason="needs the redis-server binary")
async def test_replay_after_redis_restarts(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(server.url, socket_timeout_s=1.0)
    try:
        [reservation] = await acme_reservations(store, 1)
        record = usage_for(reservation, cost_usd="0.3", time_s=T0)
        buffer = LedgerBuffer(store, initial_backoff_s=0.01, max_backoff_s=0.1)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert await buffer.settle(reservation, record) is None
        assert (buffer.buffered, buffer.pending) == (1, 1)
        server.start()  # same port; this server kept no data, the replay still lands
        assert await buffer.flush(timeout_s=30)
        assert (buffer.replayed, buffer.dropped) == (1, 0)
        assert await store.usage_records(0, 2**32) == [record]
        [total] = await store.usage_report(T0 - 3600, T0 + 3600)
        assert total.cost_usd == record.cost_usd
    finally:
        await store.close()
        server.stop()
