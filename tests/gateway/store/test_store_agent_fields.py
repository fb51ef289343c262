"""Contract: the ledger keeps an agent request's tool calls and what constrained its answer
(both backends), and a SQLite file written before those columns existed is migrated in place."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from store_testkit import acme_reservations, as_older_schema, usage_for

from gateway.store import InvalidInput, UsageRecord

pytestmark = pytest.mark.anyio


async def test_tool_calls_and_constrained_round_trip(backend):
    store = backend.open()
    tools, schema, plain = await acme_reservations(store, 3)
    written = [dataclasses.replace(usage_for(tools), tool_calls=3, constrained="tool_call"),
               dataclasses.replace(usage_for(schema), constrained="json_schema"),
               usage_for(plain)]
    for reservation, record in zip((tools, schema, plain), written):
        assert await store.settle(reservation, record) is True
    ledger = {r.request_id: r for r in await store.usage_records(0, 2**32)}
    assert [(ledger[r.request_id].tool_calls, ledger[r.request_id].constrained) for r in written] == \
        [(3, "tool_call"), (0, "json_schema"), (0, None)]


def test_records_refuse_bad_agent_fields():
    base = dict(request_id="r1", time=1.0, team_id="t", key_id="k", requested_model="m", routed_model="m")
    with pytest.raises(InvalidInput):
        UsageRecord(**base, tool_calls=-1)
    with pytest.raises(InvalidInput):
        UsageRecord(**base, constrained="JSON schema!")
    # a record journaled by an older gateway (no agent fields) still decodes
    old = UsageRecord(**base).to_json_dict()
    del old["tool_calls"], old["constrained"]
    assert (UsageRecord.from_json_dict(old).tool_calls, UsageRecord.from_json_dict(old).constrained) == (0, None)


async def test_a_version_1_sqlite_file_is_migrated_keeping_its_ledger(tmp_path):
    from gateway.store.sqlite_schema import SCHEMA_VERSION, connect
    from store_testkit import Backend

    path = tmp_path / "old.db"
    shared = Backend("sqlite", sqlite_path=path)
    store = shared.open()
    first, second = await acme_reservations(store, 2)
    assert await store.settle(first, usage_for(first)) is True
    await shared.aclose()
    # make it the file an older muxgate wrote: usage_records without the agent columns
    as_older_schema(path, ["ALTER TABLE usage_records DROP COLUMN constrained",
                           "ALTER TABLE usage_records DROP COLUMN tool_calls",
                           "ALTER TABLE teams DROP COLUMN share"], 1)

    reopened = Backend("sqlite", sqlite_path=path)
    try:
        store = reopened.open()
        assert await store.settle(second, dataclasses.replace(usage_for(second), tool_calls=2,
                                                               constrained="json_object")) is True
        ledger = {r.request_id: r for r in await store.usage_records(0, 2**32)}
        assert (ledger[first.id].tool_calls, ledger[first.id].constrained) == (0, None)
        assert (ledger[second.id].tool_calls, ledger[second.id].constrained) == (2, "json_object")
    finally:
        await reopened.aclose()
    conn = connect(str(path), busy_timeout_s=1)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
