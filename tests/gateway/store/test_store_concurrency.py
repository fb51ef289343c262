"""Contract: budgets hold under concurrency, within one store instance, across instances and
across OS processes (both backends)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from decimal import Decimal

import pytest
from store_testkit import money, reserve_in_child_process, usage_for

from gateway.store import Denial, Reservation

pytestmark = pytest.mark.anyio

BUDGET = Decimal("1.00")
WORST_CASE = Decimal("0.05")          # exactly 20 worst cases fit the budget
FITS = int(BUDGET / WORST_CASE)


async def _setup(store):
    await store.create_team("Acme", team_id="acme", budget_usd=BUDGET)
    return await store.lookup((await store.create_key("acme")).secret)


async def _settle_all_and_check(store, reservations):
    """Settle every admitted request at a random actual cost <= its worst case."""
    rng = random.Random(4)
    for r in reservations:
        actual = Decimal(rng.randint(0, 50_000)) / 1_000_000
        assert await store.settle(r, usage_for(r, cost_usd=actual)) is True
    spend = await store.spend("acme")
    assert spend.reserved_usd == money("0")
    assert spend.spent_usd <= BUDGET
    ledger = await store.usage_records(0, 2**32, limit=10_000)
    assert sum(r.cost_usd for r in ledger) == spend.spent_usd


def _admitted(outcomes):
    assert all(isinstance(o, Reservation) or o.limit == "team_budget" for o in outcomes)
    return [o for o in outcomes if isinstance(o, Reservation)]


async def test_200_concurrent_reserves_one_instance(backend):
    store = backend.open()
    principal = await _setup(store)
    outcomes = await asyncio.gather(*(
        store.reserve(principal, "small", WORST_CASE, 100) for _ in range(200)))
    admitted = _admitted(outcomes)
    assert len(admitted) == FITS
    assert (await store.spend("acme")).reserved_usd == BUDGET
    await _settle_all_and_check(store, admitted)


async def test_200_concurrent_reserves_two_instances(backend):
    first, second = backend.open(), backend.open()
    principal = await _setup(first)
    outcomes = await asyncio.gather(*(
        (first if i % 2 else second).reserve(principal, "small", WORST_CASE, 100)
        for i in range(200)))
    admitted = _admitted(outcomes)
    assert len(admitted) == FITS
    # Settle from both instances too, concurrently with fresh reserves that must keep fitting.
    more = await asyncio.gather(
        *((first if i % 2 else second).settle(r, usage_for(r, cost_usd=WORST_CASE))
          for i, r in enumerate(admitted)),
        *(second.reserve(principal, "small", WORST_CASE, 100) for _ in range(20)))
    assert all(isinstance(o, (bool, Denial)) for o in more)
    spend = await first.spend("acme")
    assert spend.spent_usd + spend.reserved_usd <= BUDGET
    assert spend.spent_usd == BUDGET


async def test_200_concurrent_reserves_two_processes(backend):
    store = backend.open()
    principal = await _setup(store)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=reserve_in_child_process,
                           args=(backend.url, principal, 100, str(WORST_CASE), barrier, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    loop = asyncio.get_running_loop()
    try:
        batches = [await loop.run_in_executor(None, results.get, True, 120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in workers] == [0, 0]
    admitted = [r for batch in batches for r in batch]
    assert len(admitted) == FITS
    assert len({r.id for r in admitted}) == FITS
    await _settle_all_and_check(store, admitted)
