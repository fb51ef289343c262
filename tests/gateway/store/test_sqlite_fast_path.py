"""SQLiteStore's fast path: lookup, reserve and settle run on the event loop's own connection
when the file's lock is free, and on the store's thread (waiting on the busy timeout) when
another connection or process holds it; the WAL is still checkpointed."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

import pytest
from store_testkit import usage_for

from gateway.store import Reservation, SQLiteStore

pytestmark = pytest.mark.anyio


async def _principal(store):
    await store.create_team("Acme", team_id="acme", budget_usd="100")
    return await store.lookup((await store.create_key("acme")).secret)


async def test_reserve_and_settle_wait_for_a_lock_another_process_holds(tmp_path):
    path = tmp_path / "muxgate.db"
    store = SQLiteStore(path, busy_timeout_s=30)
    try:
        principal = await _principal(store)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process is mid-transaction
        reserving = asyncio.ensure_future(store.reserve(principal, "small", "0.5", 100))
        await asyncio.sleep(0.2)
        assert not reserving.done()  # waiting on the store's thread, not failed, not blocking us
        blocker.execute("COMMIT")
        reservation = await reserving
        assert isinstance(reservation, Reservation)
        blocker.execute("BEGIN IMMEDIATE")
        settling = asyncio.ensure_future(store.settle(reservation, usage_for(reservation, cost_usd="0.2")))
        await asyncio.sleep(0.2)
        assert not settling.done()
        blocker.execute("COMMIT")
        blocker.close()
        assert await settling is True
        spend = await store.spend("acme")
        assert (str(spend.spent_usd), str(spend.reserved_usd)) == ("0.200000", "0.000000")
    finally:
        await store.close()


async def test_a_store_used_from_another_thread_goes_through_its_own_thread(tmp_path):
    store = SQLiteStore(tmp_path / "muxgate.db")
    try:
        principal = await _principal(store)
        outcome = {}

        def other_loop():
            async def run():
                reservation = await store.reserve(principal, "small", "0.5", 100)
                outcome["settled"] = await store.settle(reservation, usage_for(reservation, cost_usd="0.1"))

            asyncio.run(run())

        thread = threading.Thread(target=other_loop)
        thread.start()
        await asyncio.to_thread(thread.join)
        assert outcome == {"settled": True}
        assert str((await store.spend("acme")).spent_usd) == "0.100000"
    finally:
        await store.close()


async def test_the_wal_is_checkpointed(tmp_path):
    path = tmp_path / "muxgate.db"
    store = SQLiteStore(path)
    try:
        principal = await _principal(store)
        sizes = []
        for i in range(1500):
            reservation = await store.reserve(principal, "small", "0.01", 100)
            await store.settle(reservation, usage_for(reservation, cost_usd="0.01"))
            if i % 100 == 99:
                # let the store's thread finish the checkpoint it was handed (a fixed sleep was
                # not always enough on a busy machine)
                if store._checkpoint is not None:
                    await asyncio.wait_for(asyncio.shield(store._checkpoint), 30)
                sizes.append(os.path.getsize(f"{path}-wal"))
        # Unchecked, the WAL grows with every commit (15 times its first size by the end);
        # checkpointed, it is reused from its start.
        assert sizes[-1] < 2 * sizes[0]
        assert len(await store.usage_records(0, 2**32, limit=10_000)) == 1500
    finally:
        await store.close()


def _reservation_rows(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
    finally:
        conn.close()


async def test_a_team_and_key_without_limits_reserve_without_a_row_and_still_settle(tmp_path):
    path = tmp_path / "muxgate.db"
    store = SQLiteStore(path)
    try:
        await store.create_team("Free", team_id="free")
        principal = await store.lookup((await store.create_key("free")).secret)
        reservation = await store.reserve(principal, "small", "0.5", 100)
        assert isinstance(reservation, Reservation)
        assert _reservation_rows(path) == 0  # nothing to hold: no budget, RPM or TPM anywhere
        assert await store.settle(reservation, usage_for(reservation, cost_usd="0.2")) is True
        assert await store.settle(reservation, usage_for(reservation, cost_usd="0.2")) is False
        assert [r.request_id for r in await store.usage_records(0, 2**33)] == [reservation.id]
        assert str((await store.spend("free")).spent_usd) == "0.200000"

        # A budget set later takes effect on the next request: it is held and checked again.
        await store.update_team("free", budget_usd="1")
        held = await store.reserve(principal, "small", "0.5", 100)
        assert isinstance(held, Reservation) and _reservation_rows(path) == 1
        assert str((await store.spend("free")).reserved_usd) == "0.500000"
        assert (await store.reserve(principal, "small", "0.5", 100)).limit == "team_budget"

        # A limit on the key alone is enough to hold the reservation too.
        await store.update_team("free", budget_usd=None)
        await store.settle(held, usage_for(held))
        limited = await store.lookup((await store.create_key("free", rpm_limit=60)).secret)
        assert isinstance(await store.reserve(limited, "small", "0.1", 10), Reservation)
        assert _reservation_rows(path) == 1
    finally:
        await store.close()
