"""Contract: what routing learns from, on both backends: routed requests (team-scoped, kept once),
outcomes (one per request and source, a later one replacing the earlier), the router's state
(last writer wins); Redis expires them after the retention; a version-2 SQLite file is migrated."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import redis
from store_testkit import T0, Backend, FakeClock, acme_reservations, as_older_schema, usage_for

from gateway.store import InvalidInput, RoutedRequest, open_store
from policies.features import RequestFeatures
from policies.outcome import Outcome, encode_features

pytestmark = pytest.mark.anyio

FEATURES = encode_features(RequestFeatures(dense=np.arange(4, dtype=np.float32),
                                           indices=np.array([3, 17, 99], dtype=np.int64),
                                           values=np.ones(3, dtype=np.float32)))


def routed(request_id: str, team: str = "acme", at: float = T0, **kw) -> RoutedRequest:
    fields = dict(pair="small-m->large-m", routed="small", model="small-m", features=FEATURES)
    return RoutedRequest(request_id, team, at, **{**fields, **kw})


def outcome(request_id: str, source: str = "feedback", at: float = T0, team: str = "acme", **kw) -> Outcome:
    fields = dict(pair="small-m->large-m", routed="small", small_score=1.0, large_score=None, features=FEATURES)
    return Outcome(request_id, team, source=source, created_at=at, **{**fields, **kw})


async def test_a_routed_request_is_kept_once_and_only_its_team_sees_it(backend):
    store = backend.open(clock=FakeClock(T0 + 60))
    first = routed("r1", messages=[{"role": "user", "content": "hi"}], answer="hello")
    assert await store.record_routed(first) is True
    assert await store.record_routed(routed("r1", answer="another")) is False  # settle is once
    assert await store.routed_request("acme", "r1") == first
    assert await store.routed_request("other", "r1") is None  # another team's id looks unknown
    assert await store.routed_request("acme", "nope") is None
    assert await store.set_other_answer("acme", "r1", "the large one") is True
    assert await store.set_other_answer("other", "r1", "x") is False
    kept = await store.routed_request("acme", "r1")
    assert (kept.answer, kept.other_answer, kept.large_answer, kept.features) == \
        ("hello", "the large one", "the large one", FEATURES)


async def test_routed_requests_are_kept_in_batches_once_each(backend):
    store = backend.open(clock=FakeClock(T0 + 60))
    assert await store.record_routed(routed("r0")) is True
    batch = [routed(f"r{i}", team="beta" if i % 2 else "acme", at=T0 + i) for i in range(5)]
    assert await store.record_routed_many(batch) == 4  # r0 was kept already
    assert await store.record_routed_many([]) == 0
    assert [r.request_id for r in await store.routed_requests(T0, T0 + 10, team_id="beta")] == ["r1", "r3"]
    assert (await store.routed_request("acme", "r0")).time == T0


async def test_routed_requests_are_listed_by_time_and_team(backend):
    store = backend.open(clock=FakeClock(T0 + 60))
    for i, team in enumerate(["acme", "beta", "acme", "acme"]):
        await store.record_routed(routed(f"r{i}", team=team, at=T0 + i))
    assert [r.request_id for r in await store.routed_requests(T0, T0 + 10)] == ["r0", "r1", "r2", "r3"]
    assert [r.request_id for r in await store.routed_requests(T0 + 1, T0 + 3, team_id="acme")] == ["r2"]
    assert [r.request_id for r in await store.routed_requests(T0, T0 + 10, team_id="acme", limit=2)] == ["r0", "r2"]


async def test_an_outcome_replaces_the_earlier_one_of_its_source(backend):
    store = backend.open(clock=FakeClock(T0 + 60))
    await store.record_outcome(outcome("r1", small_score=0.0))
    await store.record_outcome(outcome("r1", small_score=1.0, at=T0 + 1))  # the second score wins
    await store.record_outcome(outcome("r1", source="shadow", small_score=0.0, large_score=1.0, at=T0 + 2))
    await store.record_outcome(outcome("r2", team="beta", pair="a->b", at=T0 + 3))
    rows = await store.outcomes(T0, T0 + 10)
    assert [(o.request_id, o.source, o.small_score, o.large_score) for o in rows] == \
        [("r1", "feedback", 1.0, None), ("r1", "shadow", 0.0, 1.0), ("r2", "feedback", 1.0, None)]
    assert rows[0].features == FEATURES and rows[0].team == "acme"
    assert [o.request_id for o in await store.outcomes(T0, T0 + 10, team_id="beta")] == ["r2"]
    assert [o.source for o in await store.outcomes(T0, T0 + 10, pair="small-m->large-m")] == ["feedback", "shadow"]
    assert await store.outcomes(T0 + 3, T0 + 4, pair="small-m->large-m") == []


async def test_the_router_state_is_shared_and_the_last_writer_wins(backend):
    clock = FakeClock()
    one, two = backend.open(clock=clock), backend.open(clock=clock)
    assert await one.load_router_state() is None
    await one.save_router_state({"a->b": {"labels": 1}})
    clock.advance(5)
    await two.save_router_state({"a->b": {"labels": 2}})
    assert await one.load_router_state() == ({"a->b": {"labels": 2}}, T0 + 5)
    with pytest.raises(InvalidInput):
        await one.save_router_state({"x": float("nan")})


async def test_bad_records_are_refused():
    with pytest.raises(InvalidInput):
        routed("r1", routed="medium")
    with pytest.raises(InvalidInput):
        routed("r1", pair="no-pair")
    with pytest.raises(InvalidInput):
        routed("bad id with spaces")


async def test_redis_expires_routed_requests_and_outcomes_after_the_retention(redis_url):
    shared = Backend("redis", redis_url=redis_url)
    store = open_store(shared.url, outcome_retention_s=120, clock=FakeClock(T0 + 60))
    client = redis.Redis.from_url(redis_url)
    try:
        await store.record_routed(routed("r1"))
        await store.record_outcome(outcome("r1"))
        for name in client.scan_iter(match=shared.prefix + "*"):
            assert 0 < client.ttl(name) <= 120, name  # nothing of it is kept for ever
    finally:
        client.close()
        await store.close()
        await shared.aclose()


async def test_a_version_2_sqlite_file_is_migrated_keeping_its_ledger(tmp_path):
    from gateway.store.sqlite_schema import SCHEMA_VERSION

    path = tmp_path / "v2.db"
    shared = Backend("sqlite", sqlite_path=path)
    store = shared.open()
    first, = await acme_reservations(store, 1)
    assert await store.settle(first, usage_for(first)) is True
    await shared.aclose()
    # what a version-2 muxgate wrote: no outcome tables (nor the teams' share of version 4)
    as_older_schema(path, [f"DROP TABLE {table}" for table in ("routed_requests", "outcomes", "router_state")]
                    + ["ALTER TABLE teams DROP COLUMN share"], 2)

    reopened = Backend("sqlite", sqlite_path=path)
    try:
        store = reopened.open()
        assert [r.request_id for r in await store.usage_records(0, 2**32)] == [first.id]
        assert await store.record_routed(routed("r1")) is True
        await store.record_outcome(outcome("r1"))
        assert len(await store.outcomes(0, 2**32)) == 1
    finally:
        await reopened.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
