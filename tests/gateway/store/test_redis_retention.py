"""Redis keeps the usage ledger for a documented time (issue 19 item 14): each usage record
expires `record_retention_s` after it is written and the ledger's time indexes are trimmed to
it; an hour's rollups expire `rollup_retention_s` after their last write, and the index of
hours is trimmed to it. Against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis
from store_testkit import usage_for

from gateway.store import Reservation

pytestmark = pytest.mark.anyio

DAY = 86400


async def test_usage_records_and_rollups_expire_after_their_retention(redis_url):
    from gateway.store.redis_store import RedisStore
    from store_testkit import Backend

    shared = Backend("redis", redis_url=redis_url)
    now = [time.time() - 200 * DAY]  # settled 200 days ago, then today
    store = RedisStore(redis_url, prefix=shared.prefix, clock=lambda: now[0], record_retention_s=90 * DAY,
                       rollup_retention_s=730 * DAY)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await store.create_team("Acme", team_id="acme", budget_usd="5")
        principal = await store.lookup((await store.create_key("acme")).secret)
        old = await store.reserve(principal, "m", "0.01", 10, request_id="old")
        assert isinstance(old, Reservation)
        assert await store.settle(old, usage_for(old))
        p = shared.prefix
        ttl = raw.ttl(p + "rec:old")
        assert 89 * DAY < ttl <= 90 * DAY  # every record expires (real seconds on the server)
        hour = int(old.created_at // 3600)
        assert 729 * DAY < raw.ttl(f"{p}rollup:{hour}:acme") <= 730 * DAY  # the hour's rollups
        assert 729 * DAY < raw.ttl(f"{p}rollup_teams:{hour}") <= 730 * DAY

        now[0] = time.time()
        new = await store.reserve(principal, "m", "0.01", 10, request_id="new")
        assert await store.settle(new, usage_for(new))
        # the 200-day-old request left the ledger's indexes (its record is past retention)
        assert raw.zrange(p + "ledger", 0, -1) == ["new"]
        assert raw.zrange(p + "ledger:team:acme", 0, -1) == ["new"]
        assert 0 < raw.ttl(p + "ledger:team:acme") <= 90 * DAY
        # and the hours index keeps both hours: 200 days is within the rollups' two years
        assert len(raw.zrange(p + "rollup_hours", 0, -1)) == 2
    finally:
        raw.close()
        await store.close()
        await shared.aclose()
