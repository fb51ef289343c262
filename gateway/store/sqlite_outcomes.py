"""SQLiteStore's part of the Store protocol for routing outcomes (gateway/store/outcomes.py):
routed requests, their outcomes and the router's state, in the tables of schema version 3.

A mixin: it runs its statements through SQLiteStore's ``_call`` (the store's own thread), never
on the request path (the gateway writes these after the answer, in the background).
"""

from __future__ import annotations

import json
import sqlite3

from policies.outcome import Outcome
from gateway.store.outcomes import RoutedRequest, check_outcome, check_state
from gateway.store.sqlite_schema import immediate
from gateway.store.validation import check_count, to_epoch


def _routed_from_row(row: sqlite3.Row) -> RoutedRequest:
    return RoutedRequest(
        request_id=row["request_id"], team_id=row["team_id"], time=row["time"], pair=row["pair"],
        routed=row["routed"], model=row["model"], features=bytes(row["features"]),
        messages=None if row["messages"] is None else json.loads(row["messages"]),
        answer=row["answer"], other_answer=row["other_answer"])


def _outcome_from_row(row: sqlite3.Row) -> Outcome:
    return Outcome(request_id=row["request_id"], team=row["team_id"], pair=row["pair"], routed=row["routed"],
                   small_score=row["small_score"], large_score=row["large_score"], source=row["source"],
                   features=bytes(row["features"]), created_at=row["created_at"])


class SQLiteOutcomes:
    """Mixed into SQLiteStore."""

    async def record_routed(self, request: RoutedRequest) -> bool:
        return await self.record_routed_many([request]) == 1

    async def record_routed_many(self, requests: list[RoutedRequest]) -> int:
        rows = [(r.request_id, r.team_id, r.time, r.pair, r.routed, r.model, r.features,
                 None if r.messages is None else json.dumps(r.messages), r.answer, r.other_answer) for r in requests]

        def _insert(conn):
            with immediate(conn):
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO routed_requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                return conn.total_changes - before

        return await self._call(_insert) if rows else 0

    async def routed_request(self, team_id: str, request_id: str) -> RoutedRequest | None:
        def _get(conn):
            row = conn.execute("SELECT * FROM routed_requests WHERE request_id = ? AND team_id = ?",
                               (request_id, team_id)).fetchone()
            return None if row is None else _routed_from_row(row)

        return await self._call(_get)

    async def set_other_answer(self, team_id: str, request_id: str, answer: str) -> bool:
        def _set(conn):
            with immediate(conn):
                cursor = conn.execute("UPDATE routed_requests SET other_answer = ? "
                                      "WHERE request_id = ? AND team_id = ?", (answer, request_id, team_id))
            return cursor.rowcount == 1

        return await self._call(_set)

    async def routed_requests(self, start, end, *, team_id: str | None = None,
                              limit: int = 1000) -> list[RoutedRequest]:
        limit = check_count(limit, "limit")
        where, params = "time >= ? AND time < ?", [to_epoch(start), to_epoch(end)]
        if team_id is not None:
            where, params = where + " AND team_id = ?", params + [team_id]
        sql = f"SELECT * FROM routed_requests WHERE {where} ORDER BY time, request_id LIMIT ?"
        return await self._call(lambda conn: [_routed_from_row(r) for r in conn.execute(sql, (*params, limit))])

    async def record_outcome(self, outcome: Outcome) -> None:
        o = check_outcome(outcome)

        def _upsert(conn):
            with immediate(conn):
                conn.execute("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (o.request_id, o.source, o.team, o.pair, o.routed, o.small_score, o.large_score,
                              o.features, o.created_at))

        await self._call(_upsert)

    async def outcomes(self, start, end, *, team_id: str | None = None, pair: str | None = None,
                       limit: int = 100_000) -> list[Outcome]:
        limit = check_count(limit, "limit")
        where, params = "created_at >= ? AND created_at < ?", [to_epoch(start), to_epoch(end)]
        if team_id is not None:
            where, params = where + " AND team_id = ?", params + [team_id]
        if pair is not None:
            where, params = where + " AND pair = ?", params + [pair]
        sql = f"SELECT * FROM outcomes WHERE {where} ORDER BY created_at, request_id, source LIMIT ?"
        return await self._call(lambda conn: [_outcome_from_row(r) for r in conn.execute(sql, (*params, limit))])

    async def save_router_state(self, state: dict) -> None:
        text, now = check_state(state), self._clock()

        def _save(conn):
            with immediate(conn):
                conn.execute("INSERT OR REPLACE INTO router_state VALUES (1, ?, ?)", (text, now))

        await self._call(_save)

    async def load_router_state(self) -> tuple[dict, float] | None:
        row = await self._call(lambda conn: conn.execute(
            "SELECT state, saved_at FROM router_state WHERE id = 1").fetchone())
        return None if row is None else (json.loads(row["state"]), row["saved_at"])

