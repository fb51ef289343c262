"""The reserve and settle transactions of SQLiteStore.

Both run inside ``BEGIN IMMEDIATE``: the write lock is held from the first read to the commit,
so the checks and the writes are one atomic step for every connection and process on the file.
The decision order matches the Redis Lua script exactly: key revoked, model allowed, team
budget, key budget, team RPM, key RPM, team TPM, key TPM.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from gateway.store import ratelimit
from gateway.store.entities import principal_for
from gateway.store.errors import NotFound
from gateway.store.money import micros_to_usd
from gateway.store.periods import hour_bucket, period_window
from gateway.store.records import (
    KEY_BUDGET,
    KEY_REVOKED,
    KEY_RPM,
    KEY_TPM,
    MODEL_NOT_ALLOWED,
    TEAM_BUDGET,
    TEAM_RPM,
    TEAM_TPM,
    ApiKey,
    Denial,
    Principal,
    Reservation,
    Team,
    UsageRecord,
)
from gateway.store.reports import rollup_increments
from gateway.store.sqlite_rows import key_from_row, team_from_row
from gateway.store.sqlite_schema import immediate


def spent_micros(conn: sqlite3.Connection, scope: str, owner: str, period: str) -> int:
    """Settled spend of a team or key ('team' / 'key' scope) in a budget period."""
    row = conn.execute("SELECT spent_micros FROM spend WHERE scope = ? AND owner_id = ? "
                       "AND period = ?", (scope, owner, period)).fetchone()
    return 0 if row is None else row[0]


def held_micros(conn: sqlite3.Connection, scope: str, owner: str, period: str,
                now: float) -> int:
    """What unexpired reservations of a team or key hold in a budget period."""
    column, period_column = ("team_id", "team_period") if scope == "team" else (
        "key_id", "key_period")
    return conn.execute(
        f"SELECT COALESCE(SUM(cost_micros), 0) FROM reservations WHERE {column} = ? "
        f"AND {period_column} = ? AND expires_at > ?", (owner, period, now)).fetchone()[0]


def _tat(conn: sqlite3.Connection, scope: str, owner: str, kind: str) -> float | None:
    row = conn.execute("SELECT tat_ms FROM rate_state WHERE scope = ? AND owner_id = ? "
                       "AND kind = ?", (scope, owner, kind)).fetchone()
    return None if row is None else row[0]


def _existing(row: sqlite3.Row, model: str) -> Reservation:
    return Reservation(id=row["id"], team_id=row["team_id"], key_id=row["key_id"], model=model,
                       cost_usd=micros_to_usd(row["cost_micros"]), tokens=row["tokens"],
                       created_at=row["created_at"], expires_at=row["expires_at"],
                       team_period=row["team_period"], key_period=row["key_period"])


# (team, key, principal) by the exact rows they were parsed from: parsing the two rows (JSON lists,
# Decimal budgets) was a fifth of a reservation's CPU, and a team's and a key's rows rarely change
# (any change to either row is a different cache key, so a limit or revocation applies at once).
_PARSED: dict[tuple, tuple[Team, ApiKey, Principal]] = {}
_PARSED_MAX = 4096


def _parsed(team_row: sqlite3.Row, key_row: sqlite3.Row) -> tuple[Team, ApiKey, Principal]:
    rows = (tuple(team_row), tuple(key_row))
    hit = _PARSED.get(rows)
    if hit is None:
        team, key = team_from_row(team_row), key_from_row(key_row)
        hit = (team, key, principal_for(team, key))
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[rows] = hit
    return hit


def reserve(conn: sqlite3.Connection, principal: Principal, model: str, cost: int, tokens: int,
            now: float, rid: str, ttl_s: float, sweep: bool = True) -> Reservation | Denial:
    """Check and take budgets and rate limits for one request, all or nothing.

    ``sweep``: also delete every expired reservation (they no longer count either way; the
    store sweeps now and then rather than on every request)."""
    with immediate(conn):
        if sweep:
            conn.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,))
        # Idempotent per request id: a retried call returns the reservation it already made.
        existing = conn.execute("SELECT * FROM reservations WHERE id = ?", (rid,)).fetchone()
        if existing is not None:
            if existing["expires_at"] > now:
                limits = conn.execute("SELECT (SELECT tpm_limit FROM teams WHERE id = ?), (SELECT tpm_limit "
                                      "FROM api_keys WHERE id = ?)", (existing["team_id"], existing["key_id"])).fetchone()
                return replace(_existing(existing, model), tpm_limited=any(x is not None for x in limits))
            conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))
        team_row = conn.execute("SELECT * FROM teams WHERE id = ?",
                                (principal.team_id,)).fetchone()
        key_row = conn.execute("SELECT * FROM api_keys WHERE id = ?",
                               (principal.key_id,)).fetchone()
        if team_row is None:
            raise NotFound(f"team {principal.team_id!r} not found")
        if key_row is None or key_row["team_id"] != principal.team_id:
            raise NotFound(f"key {principal.key_id!r} not found")
        team, key, allowed = _parsed(team_row, key_row)
        if not key.is_active(now):
            return Denial.of(KEY_REVOKED)
        if not allowed.allows_model(model):
            return Denial.of(MODEL_NOT_ALLOWED)
        team_window = period_window(team.budget_period, now)
        key_window = period_window(key.budget_period, now)

        for scope, owner, budget, window, limit in (
                ("team", team.id, team_row["budget_micros"], team_window, TEAM_BUDGET),
                ("key", key.id, key_row["budget_micros"], key_window, KEY_BUDGET)):
            if budget is None:
                continue
            used = (spent_micros(conn, scope, owner, window.key)
                    + held_micros(conn, scope, owner, window.key, now))
            if used + cost > budget:
                retry = None if window.end is None else round(window.end - now, 3)
                return Denial.of(limit, retry)

        now_ms = now * 1000.0
        new_states = []
        for scope, owner, kind, cap, amount, limit in (
                ("team", team.id, "rpm", team.rpm_limit, 1, TEAM_RPM),
                ("key", key.id, "rpm", key.rpm_limit, 1, KEY_RPM),
                ("team", team.id, "tpm", team.tpm_limit, tokens, TEAM_TPM),
                ("key", key.id, "tpm", key.tpm_limit, tokens, KEY_TPM)):
            if cap is None:
                continue
            decision = ratelimit.take(_tat(conn, scope, owner, kind), cap, amount, now_ms)
            if not decision.allowed:
                return Denial.of(limit, decision.retry_after_s)
            new_states.append((scope, owner, kind, decision.new_tat_ms))

        expires = now + ttl_s
        # A reservation row only holds budget for the checks above; when neither the team nor
        # the key has a budget, RPM or TPM limit (read in this transaction, so a limit set since
        # takes effect on the next request) there is nothing for it to hold, and the request
        # goes without one: the transaction then writes nothing. Settlement does not need the
        # row (it records usage and charges spend either way). A budget set while such requests
        # are in flight does not see them as held; they are charged when they settle.
        if not _unlimited(team_row, key_row):
            conn.execute("INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (rid, team.id, key.id, team_window.key, key_window.key, cost, tokens,
                          now, expires))
        if new_states:
            conn.executemany(
                "INSERT INTO rate_state VALUES (?, ?, ?, ?) ON CONFLICT (scope, owner_id, kind) "
                "DO UPDATE SET tat_ms = excluded.tat_ms", new_states)
    return Reservation(id=rid, team_id=team.id, key_id=key.id, model=model,
                       cost_usd=micros_to_usd(cost), tokens=tokens, created_at=now,
                       expires_at=expires, team_period=team_window.key, key_period=key_window.key,
                       tpm_limited=team.tpm_limit is not None or key.tpm_limit is not None)


def take_tokens(conn: sqlite3.Connection, reservation: Reservation, tokens: int,
                now: float) -> Reservation | Denial:
    """More TPM for a reservation (its prompt's real count exceeded the estimate), from the team's
    and the key's limit, both or neither; the reservation row holds the new total. Refused, the
    reservation's tokens go back to both limits (it holds none after)."""
    if tokens <= 0:
        return reservation
    with immediate(conn):
        limits = conn.execute("SELECT (SELECT tpm_limit FROM teams WHERE id = ?), "
                              "(SELECT tpm_limit FROM api_keys WHERE id = ?)",
                              (reservation.team_id, reservation.key_id)).fetchone()
        states, denial = [], None
        scopes = [(scope, owner, cap, limit) for scope, owner, cap, limit in (
            ("team", reservation.team_id, limits[0], TEAM_TPM), ("key", reservation.key_id, limits[1], KEY_TPM))
            if cap is not None]
        for scope, owner, cap, limit in scopes:
            decision = ratelimit.take(_tat(conn, scope, owner, "tpm"), cap, tokens, now * 1000.0)
            if not decision.allowed:
                denial = denial or Denial.of(limit, decision.retry_after_s)
            states.append((scope, owner, "tpm", decision.new_tat_ms))
        if denial is not None:
            # the request will not run: what it holds goes back in this same step, so a
            # concurrent request's check already sees the room
            for scope, owner, cap, _ in scopes:
                tat = ratelimit.refund(_tat(conn, scope, owner, "tpm"), cap, reservation.tokens, now * 1000.0)
                if tat is not None:
                    conn.execute("UPDATE rate_state SET tat_ms = ? WHERE scope = ? AND owner_id = ? "
                                 "AND kind = 'tpm'", (tat, scope, owner))
            conn.execute("UPDATE reservations SET tokens = 0 WHERE id = ?", (reservation.id,))
            return denial
        if states:
            conn.executemany(
                "INSERT INTO rate_state VALUES (?, ?, ?, ?) ON CONFLICT (scope, owner_id, kind) "
                "DO UPDATE SET tat_ms = excluded.tat_ms", states)
        conn.execute("UPDATE reservations SET tokens = tokens + ? WHERE id = ?", (tokens, reservation.id))
    return replace(reservation, tokens=reservation.tokens + tokens)


def renew(conn: sqlite3.Connection, ids: list[str], now: float, ttl_s: float) -> int:
    """Running requests' reservations expire a full ttl from now; an expired one stays released."""
    with immediate(conn):
        return sum(conn.execute("UPDATE reservations SET expires_at = ? WHERE id = ? AND expires_at > ?",
                                (now + ttl_s, rid, now)).rowcount for rid in ids)


def _unlimited(team_row: sqlite3.Row, key_row: sqlite3.Row) -> bool:
    """Neither the team nor the key has a budget, an RPM or a TPM limit."""
    return all(row[column] is None for row in (team_row, key_row)
               for column in ("budget_micros", "rpm_limit", "tpm_limit"))


def settle(conn: sqlite3.Connection, reservation: Reservation, record: UsageRecord,
           now: float) -> bool:
    """Release, charge, refund, append and roll up; False if this request was settled before."""
    inc = rollup_increments(record)
    with immediate(conn):
        inserted = conn.execute(
            "INSERT INTO usage_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO NOTHING",
            (record.request_id, record.time, record.team_id, record.key_id,
             record.requested_model, record.routed_model, record.route_reason,
             record.route_score, record.prompt_tokens, record.completion_tokens,
             inc["cost_micros"], inc["baseline_micros"], record.gpu_seconds,
             record.latency_ms, record.ttft_ms, record.status, record.tool_calls,
             record.constrained)).rowcount
        if not inserted:
            return False
        conn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
        # The team is charged only while the team the request ran under still exists: one deleted
        # (or deleted and re-created under its id) since the request started owes nothing here;
        # the record and the rollups keep the usage.
        charged = [("key", reservation.key_id, reservation.key_period, inc["cost_micros"])]
        if conn.execute("SELECT 1 FROM teams WHERE id = ? AND created_at <= ?",
                        (reservation.team_id, record.time)).fetchone():
            charged.append(("team", reservation.team_id, reservation.team_period, inc["cost_micros"]))
        conn.executemany(
            "INSERT INTO spend VALUES (?, ?, ?, ?) ON CONFLICT (scope, owner_id, period) "
            "DO UPDATE SET spent_micros = spent_micros + excluded.spent_micros", charged)
        unused = reservation.tokens - record.prompt_tokens - record.completion_tokens
        if unused > 0:
            _refund_tokens(conn, reservation, unused, now)
        conn.execute(
            "INSERT INTO usage_rollups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hour, team_id, key_id, requested_model, routed_model) DO UPDATE SET "
            "requests = requests + excluded.requests, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "cost_micros = cost_micros + excluded.cost_micros, "
            "baseline_micros = baseline_micros + excluded.baseline_micros, "
            "gpu_micros = gpu_micros + excluded.gpu_micros, "
            "errors = errors + excluded.errors",
            (hour_bucket(record.time), record.team_id, record.key_id, record.requested_model,
             record.routed_model, inc["requests"], inc["prompt_tokens"],
             inc["completion_tokens"], inc["cost_micros"], inc["baseline_micros"],
             inc["gpu_micros"], inc["errors"]))
    return True


def _refund_tokens(conn: sqlite3.Connection, reservation: Reservation, unused: int,
                   now: float) -> None:
    """Give unused worst-case tokens back to the team's and key's TPM limits."""
    limits = conn.execute("SELECT (SELECT tpm_limit FROM teams WHERE id = ?), "
                          "(SELECT tpm_limit FROM api_keys WHERE id = ?)",
                          (reservation.team_id, reservation.key_id)).fetchone()
    for scope, owner, limit in (("team", reservation.team_id, limits[0]),
                                ("key", reservation.key_id, limits[1])):
        if limit is None:
            continue
        tat = ratelimit.refund(_tat(conn, scope, owner, "tpm"), limit, unused, now * 1000.0)
        if tat is not None:
            conn.execute("UPDATE rate_state SET tat_ms = ? WHERE scope = ? AND owner_id = ? "
                         "AND kind = 'tpm'", (tat, scope, owner))
