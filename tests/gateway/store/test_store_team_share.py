"""Contract: a team's fair-share weight lives in the store (both backends), and a store written
before teams had one reads it as an equal share."""

from __future__ import annotations

import math
import sqlite3

import pytest
import redis
from store_testkit import Backend, as_older_schema

from gateway.store import InvalidInput

pytestmark = pytest.mark.anyio


async def test_a_teams_share_round_trips_and_reaches_its_keys_principal(backend):
    store = backend.open()
    assert (await store.create_team("Plain", team_id="plain")).share == 1.0
    team = await store.create_team("Acme", team_id="acme", share=3, rpm_limit=60)
    assert team.share == 3.0
    assert (await store.get_team("acme")).share == 3.0
    assert {t.id: t.share for t in await store.list_teams()} == {"plain": 1.0, "acme": 3.0}
    secret = (await store.create_key("acme")).secret
    assert (await store.lookup(secret)).share == 3.0

    updated = await store.update_team("acme", share=0.25)
    assert (updated.share, updated.rpm_limit) == (0.25, 60)  # the other fields are kept
    assert (await store.update_team("acme", rpm_limit=120)).share == 0.25  # and it is kept by theirs
    assert (await store.get_team("acme")).share == 0.25
    assert (await backend.open().lookup(secret)).share == 0.25  # another process sees it


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "2", None])
async def test_a_share_must_be_a_finite_number_above_zero(backend, bad):
    store = backend.open()
    with pytest.raises(InvalidInput, match="share"):
        await store.create_team("Bad", team_id="bad", share=bad)
    await store.create_team("Acme", team_id="acme", share=2)
    with pytest.raises(InvalidInput, match="share"):
        await store.update_team("acme", share=bad)
    assert (await store.get_team("acme")).share == 2.0


async def test_a_version_3_sqlite_file_is_migrated_its_teams_at_equal_shares(tmp_path):
    from gateway.store.sqlite_schema import SCHEMA_VERSION

    path = tmp_path / "v3.db"
    shared = Backend("sqlite", sqlite_path=path)
    store = shared.open()
    await store.create_team("Acme", team_id="acme", budget_usd="5", rpm_limit=60)
    secret = (await store.create_key("acme")).secret
    await shared.aclose()
    as_older_schema(path, ["ALTER TABLE teams DROP COLUMN share"], 3)  # what a version-3 muxgate wrote

    reopened = Backend("sqlite", sqlite_path=path)
    try:
        store = reopened.open()
        team = await store.get_team("acme")
        assert (team.share, team.rpm_limit, str(team.budget_usd)) == (1.0, 60, "5.000000")
        assert (await store.lookup(secret)).share == 1.0
        assert (await store.update_team("acme", share=4)).share == 4.0
        assert (await store.create_team("New", team_id="new", share=0.5)).share == 0.5
    finally:
        await reopened.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()


async def test_a_redis_team_hash_written_before_shares_reads_as_an_equal_share(redis_url):
    shared = Backend("redis", redis_url=redis_url)
    try:
        store = shared.open()
        await store.create_team("Acme", team_id="acme", share=5)
        secret = (await store.create_key("acme")).secret
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.hdel(f"{shared.prefix}team:acme", "share") == 1  # an older muxgate's hash
        finally:
            client.close()
        assert (await store.get_team("acme")).share == 1.0
        assert (await store.lookup(secret)).share == 1.0
        assert (await store.update_team("acme", share=2)).share == 2.0
    finally:
        await shared.aclose()
