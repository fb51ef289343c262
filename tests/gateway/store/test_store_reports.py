"""Contract: the ledger and the rollup-based reports agree to the micro-dollar (both backends)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from store_testkit import T0, FakeClock, money, usage_for

from gateway.store import InvalidInput, UsageRow

pytestmark = pytest.mark.anyio

HOUR = 3600
START = T0 - T0 % HOUR - 2 * HOUR        # hour-aligned report window
END = START + 3 * 24 * HOUR


async def _fill_ledger(store, clock):
    """~120 requests over two teams, three keys, three models, spread across three days."""
    rng = random.Random(7)
    teams = {}
    for team_id in ("acme", "beta"):
        await store.create_team(team_id.title(), team_id=team_id)
        teams[team_id] = []
        for _ in range(2 if team_id == "acme" else 1):
            teams[team_id].append(await store.lookup((await store.create_key(team_id)).secret))
    records = []
    for _ in range(120):
        team_id = rng.choice(sorted(teams))
        principal = rng.choice(teams[team_id])
        clock.now = START + rng.uniform(0, END - START)
        requested = rng.choice(["small", "large"])
        routed = rng.choice(["small", "large", "tiny"])
        reservation = await store.reserve(principal, requested, "1", 4000)
        # Awkward amounts on purpose: floats that do not add up in binary, sub-cent values.
        cost = rng.choice([0.1, 0.2, 0.7, 1e-6, 0.000123, 0.3333333]) * rng.randint(1, 3)
        record = usage_for(
            reservation, cost_usd=cost, baseline_cost_usd=Decimal("0.5"),
            prompt_tokens=rng.randint(1, 2000), completion_tokens=rng.randint(0, 1000),
            routed_model=routed, gpu_seconds=rng.uniform(0, 2),
            status=rng.choice(["ok", "ok", "ok", "error", "client_disconnect"]))
        assert await store.settle(reservation, record) is True
        records.append(record)
    return records


def _expected(records, dims):
    sums = defaultdict(lambda: [0, 0, 0, Decimal(0), Decimal(0), 0])
    for r in records:
        key = tuple(dims(r))
        acc = sums[key]
        acc[0] += 1
        acc[1] += r.prompt_tokens
        acc[2] += r.completion_tokens
        acc[3] += r.cost_usd
        acc[4] += r.baseline_cost_usd
        acc[5] += 1 if r.is_error else 0
    return {k: tuple(v) for k, v in sums.items()}


def _summed(rows, dims):
    return {tuple(dims(r)): (r.requests, r.prompt_tokens, r.completion_tokens, r.cost_usd,
                             r.baseline_cost_usd, r.errors) for r in rows}


async def test_report_totals_equal_the_ledger(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    records = await _fill_ledger(store, clock)
    ledger = await store.usage_records(START, END, limit=10_000)
    assert sorted(ledger, key=lambda r: r.request_id) == sorted(records, key=lambda r: r.request_id)
    assert [r.time for r in ledger] == sorted(r.time for r in ledger)

    [total] = await store.usage_report(START, END)
    assert total.requests == len(records)
    assert total.cost_usd == sum(r.cost_usd for r in ledger)
    assert total.baseline_cost_usd == sum(r.baseline_cost_usd for r in ledger)
    assert total.savings_usd == total.baseline_cost_usd - total.cost_usd
    assert total.prompt_tokens == sum(r.prompt_tokens for r in ledger)
    assert total.errors == sum(r.status == "error" for r in ledger)
    assert total.gpu_seconds == pytest.approx(sum(r.gpu_seconds for r in ledger))

    def day(r):
        return datetime.fromtimestamp(r.time, tz=timezone.utc).strftime("%Y-%m-%d")

    def hour(r):
        return datetime.fromtimestamp(r.time, tz=timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")

    cases = {
        ("team",): (lambda r: [r.team_id], lambda w: [w.team_id]),
        ("team", "model"): (lambda r: [r.team_id, r.routed_model],
                            lambda w: [w.team_id, w.model]),
        ("requested_model", "key"): (lambda r: [r.requested_model, r.key_id],
                                     lambda w: [w.requested_model, w.key_id]),
        ("day",): (lambda r: [day(r)], lambda w: [w.day]),
        ("hour", "team"): (lambda r: [hour(r), r.team_id], lambda w: [w.hour, w.team_id]),
    }
    for group_by, (from_record, from_row) in cases.items():
        rows = await store.usage_report(START, END, list(group_by))
        assert _summed(rows, from_row) == _expected(records, from_record), group_by
        assert sum(r.cost_usd for r in rows) == total.cost_usd

    acme = await store.usage_report(START, END, ["model"], team_id="acme")
    acme_records = [r for r in records if r.team_id == "acme"]
    assert _summed(acme, lambda w: [w.model]) == _expected(acme_records, lambda r: [r.routed_model])
    assert await store.usage_records(START, END, team_id="acme", limit=10_000) == sorted(
        acme_records, key=lambda r: (r.time, r.request_id))


async def test_report_rows_are_labelled_and_sorted(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    await store.create_team("Acme", team_id="acme")
    principal = await store.lookup((await store.create_key("acme")).secret)
    for offset, model in ((0, "b"), (HOUR, "a"), (25 * HOUR, "a")):
        clock.now = START + offset
        reservation = await store.reserve(principal, model, "0.01", 10)
        await store.settle(reservation, usage_for(reservation, cost_usd="0.01"))
    rows = await store.usage_report(START, END, ["day", "model"])
    assert rows == [
        UsageRow(day="2025-01-15", model="a", requests=1, prompt_tokens=10, completion_tokens=20,
                 cost_usd=money("0.01"), baseline_cost_usd=money("0.01")),
        UsageRow(day="2025-01-15", model="b", requests=1, prompt_tokens=10, completion_tokens=20,
                 cost_usd=money("0.01"), baseline_cost_usd=money("0.01")),
        UsageRow(day="2025-01-16", model="a", requests=1, prompt_tokens=10, completion_tokens=20,
                 cost_usd=money("0.01"), baseline_cost_usd=money("0.01")),
    ]
    first_hour = await store.usage_report(START, START + HOUR, ["hour"])
    assert [(r.hour, r.requests) for r in first_hour] == [("2025-01-15T08:00:00Z", 1)]
    assert await store.usage_report(END, END + HOUR, ["team"]) == []
    assert await store.usage_report(END, END + HOUR) == [UsageRow()]
    limited = await store.usage_records(START, END, limit=2)
    assert [r.requested_model for r in limited] == ["b", "a"]


async def test_report_arguments_are_checked(backend):
    store = backend.open()
    with pytest.raises(InvalidInput):
        await store.usage_report(START, END, ["region"])
    with pytest.raises(InvalidInput):
        await store.usage_report(START, END, "team")
    with pytest.raises(InvalidInput):
        await store.usage_report(END, START)
