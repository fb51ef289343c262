"""SQLiteStore: the embedded default, one SQLite file shared by any number of processes.

Database work runs on one dedicated thread per store (so the event loop never waits on disk
or on another process's lock) over one connection. The request path's short operations (key
lookup, reserve, settle) first try the event loop's own connection with a zero busy timeout:
when the file's write lock is free they finish right there in tens of microseconds, cheaper than
the hop to the thread and back (and than waiting for the GIL after it, which is what made the
gateway's tail latency under load); when another connection or process holds the lock they go to
the thread, which waits on the busy timeout as before. WAL checkpoints run on the thread too.
Every mutation is a ``BEGIN IMMEDIATE`` transaction, atomic across connections and processes
alike; the admission transactions live in :mod:`gateway.store.sqlite_admission`.

A call cancelled while its transaction runs on the thread still completes there; a reservation
lost that way is released by its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.tenancy.keys import hash_key
from gateway.store import sqlite_admission as admission
from gateway.store.entities import (
    authenticate,
    check_reserve_args,
    checked_pepper,
    grace_end,
    key_id_of,
    new_key,
    new_team,
    rotated_key,
    updated_team,
)
from gateway.store.errors import Conflict, InvalidInput, NotFound, StoreError, StoreUnavailable
from gateway.store.money import micros_to_usd, optional_micros_to_usd, usd_to_micros
from gateway.store.periods import period_window
from gateway.store.records import (
    UNSET,
    ApiKey,
    CreatedKey,
    Denial,
    Principal,
    Reservation,
    Spend,
    Team,
    UsageRecord,
    UsageRow,
)
from gateway.store.reports import RollupRow, aggregate, check_group_by, hour_range
from gateway.store.sqlite_outcomes import SQLiteOutcomes
from gateway.store.sqlite_rows import (
    insert_key,
    key_from_row,
    micros_or_none,
    record_from_row,
    team_from_row,
    team_values,
)
from gateway.store.sqlite_schema import connect, immediate
from gateway.store.validation import check_count, check_id, check_request_id, to_epoch

# SQLite result codes (primary, low byte) that mean "try again later", not "bad request".
_RETRYABLE_CODES = {5, 6, 10, 13, 14, 15}  # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
_LOCK_HELD_CODES = {5, 6}  # BUSY, LOCKED: the fast path leaves these to the store's thread
# Fast-path commits between two WAL checkpoints (run on the store's thread; the loop's own
# connection never checkpoints, since a checkpoint may wait on the disk).
_CHECKPOINT_EVERY = 100
# Expired reservations no longer count; deleting them is housekeeping, done at most this often.
_SWEEP_EVERY_S = 1.0


class _LockHeld(Exception):
    """The event loop's connection found the write lock (or a read lock) taken elsewhere."""


class SQLiteStore(SQLiteOutcomes):
    """The Store protocol on a SQLite file (WAL mode, safe for several processes)."""

    def __init__(self, path: str | Path, *, pepper: bytes | str | None = None,
                 clock: Callable[[], float] = time.time, reservation_ttl_s: float = 600.0,
                 busy_timeout_s: float = 10.0, synchronous: str = "NORMAL") -> None:
        self.path = str(path)
        self._pepper = checked_pepper(pepper)
        self._clock = clock
        self.reservation_ttl_s = float(reservation_ttl_s)
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="muxgate-sqlite")
        # The fast path's connection belongs to the first thread that runs an event loop on it.
        self._loop_conn: sqlite3.Connection | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self._commits_since_checkpoint = 0
        self._checkpoint: asyncio.Future | None = None
        self._last_sweep = float("-inf")

    # --- plumbing ------------------------------------------------------------------------------

    def _mapped(self, fn, args, fast: bool = False):
        """Run ``fn(connection, *args)`` with sqlite's errors mapped to the store's."""
        try:
            if fast:
                return fn(self._loop_connection(), *args)
            if self._conn is None:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._conn = connect(self.path, busy_timeout_s=self._busy_timeout_s,
                                     synchronous=self._synchronous)
            return fn(self._conn, *args)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if fast and code in _LOCK_HELD_CODES:
                raise _LockHeld() from exc
            if code in _RETRYABLE_CODES:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc
            raise StoreError(f"sqlite {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    def _in_thread(self, fn, args):
        return self._mapped(fn, args)

    async def _call(self, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._in_thread, fn, args)
        except RuntimeError as exc:  # executor shut down
            raise StoreUnavailable(f"sqlite store {self.path} is closed") from exc

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path, busy_timeout_s=0.0, synchronous=self._synchronous)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._loop_conn = conn
        return self._loop_conn

    async def _call_fast(self, fn, *args, writes: bool = True):
        """A short operation: on the event loop's connection when no one else holds the lock it
        needs, else (or from another thread than the loop's) on the store's thread via ``_call``.
        Only for operations that are idempotent or read-only, since a fallback runs them again."""
        if self._closed:
            raise StoreUnavailable(f"sqlite store {self.path} is closed")
        thread = threading.get_ident()
        if self._loop_thread is None:
            self._loop_thread = thread
        if thread == self._loop_thread:
            try:
                result = self._mapped(fn, args, fast=True)
            except _LockHeld:
                pass
            else:
                if writes:
                    self._after_fast_commit()
                return result
        return await self._call(fn, *args)

    def _after_fast_commit(self) -> None:
        """Every so many commits, checkpoint the WAL on the store's thread (fire and forget:
        a checkpoint that cannot finish now is simply retried by the next one)."""
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint < _CHECKPOINT_EVERY or (
                self._checkpoint is not None and not self._checkpoint.done()):
            return
        self._commits_since_checkpoint = 0
        try:
            self._checkpoint = asyncio.ensure_future(self._call(_checkpoint))
        except RuntimeError:  # no running loop
            return
        self._checkpoint.add_done_callback(_ignore_result)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database file answers."""
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close the connection and stop the store's thread."""
        def _close(conn):
            conn.close()
            self._conn = None

        self._closed = True
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        if self._loop_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._loop_conn.close()
            self._loop_conn = None
        if self._conn is not None:
            with contextlib.suppress(StoreError):
                await self._call(_close)
        self._executor.shutdown(wait=True)

    # --- teams ---------------------------------------------------------------------------------

    async def create_team(self, name: str, *, team_id: str | None = None, budget_usd=None,
                          budget_period: str = "monthly", rpm_limit: int | None = None,
                          tpm_limit: int | None = None, allowed_models: Iterable[str] = (),
                          share: float = 1.0) -> Team:
        """Create a team. Raises Conflict if the id is taken."""
        team = new_team(name, team_id=team_id, budget_usd=budget_usd, budget_period=budget_period,
                        rpm_limit=rpm_limit, tpm_limit=tpm_limit, allowed_models=allowed_models,
                        now=self._clock(), share=share)

        def _create(conn):
            try:
                with immediate(conn):
                    conn.execute("INSERT INTO teams VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 team_values(team))
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"team {team.id!r} already exists") from exc
            return team

        return await self._call(_create)

    async def get_team(self, team_id: str) -> Team | None:
        """The team, or None."""
        def _get(conn):
            row = conn.execute("SELECT * FROM teams WHERE id = ?", (team_id,)).fetchone()
            return None if row is None else team_from_row(row)

        return await self._call(_get)

    async def list_teams(self) -> list[Team]:
        """All teams, oldest first."""
        return await self._call(lambda conn: [
            team_from_row(r) for r in conn.execute("SELECT * FROM teams ORDER BY created_at, id")])

    async def update_team(self, team_id: str, *, name=UNSET, budget_usd=UNSET, budget_period=UNSET,
                          rpm_limit=UNSET, tpm_limit=UNSET, allowed_models=UNSET, share=UNSET) -> Team:
        """Change the given fields; NotFound if the team does not exist."""
        changes = dict(name=name, budget_usd=budget_usd, budget_period=budget_period,
                       rpm_limit=rpm_limit, tpm_limit=tpm_limit, allowed_models=allowed_models,
                       share=share)

        def _update(conn):
            with immediate(conn):
                row = conn.execute("SELECT * FROM teams WHERE id = ?", (team_id,)).fetchone()
                if row is None:
                    raise NotFound(f"team {team_id!r} not found")
                team = updated_team(team_from_row(row), **changes)
                conn.execute(
                    "UPDATE teams SET name = ?, budget_micros = ?, budget_period = ?, "
                    "rpm_limit = ?, tpm_limit = ?, allowed_models = ?, share = ? WHERE id = ?",
                    (team.name, micros_or_none(team.budget_usd), team.budget_period, team.rpm_limit,
                     team.tpm_limit, json.dumps(team.allowed_models), team.share, team.id))
            return team

        return await self._call(_update)

    async def delete_team(self, team_id: str) -> None:
        """Delete the team, revoke its keys and forget its counters; the ledger stays."""
        now = self._clock()

        def _delete(conn):
            with immediate(conn):
                if conn.execute("DELETE FROM teams WHERE id = ?", (team_id,)).rowcount == 0:
                    raise NotFound(f"team {team_id!r} not found")
                conn.execute("UPDATE api_keys SET revoked_at = ? "
                             "WHERE team_id = ? AND revoked_at IS NULL", (now, team_id))
                # A team re-created under the same id starts from zero.
                conn.execute("DELETE FROM spend WHERE scope = 'team' AND owner_id = ?", (team_id,))
                conn.execute("DELETE FROM rate_state WHERE scope = 'team' AND owner_id = ?",
                             (team_id,))
                conn.execute("DELETE FROM reservations WHERE team_id = ?", (team_id,))

        await self._call(_delete)

    # --- keys ----------------------------------------------------------------------------------

    async def create_key(self, team_id: str, *, name: str = "",
                         scopes: Iterable[str] = ("inference",), allowed_models: Iterable[str] = (),
                         budget_usd=None, budget_period: str = "monthly",
                         rpm_limit: int | None = None, tpm_limit: int | None = None,
                         expires_at: float | None = None) -> CreatedKey:
        """Create a key; the secret is returned here only. NotFound if the team is missing."""
        generated, key = new_key(team_id, name=name, scopes=scopes, allowed_models=allowed_models,
                                 budget_usd=budget_usd, budget_period=budget_period,
                                 rpm_limit=rpm_limit, tpm_limit=tpm_limit, expires_at=expires_at,
                                 now=self._clock())
        key_hash = hash_key(generated.secret, self._pepper)

        def _create(conn):
            with immediate(conn):
                if conn.execute("SELECT 1 FROM teams WHERE id = ?", (team_id,)).fetchone() is None:
                    raise NotFound(f"team {team_id!r} not found")
                insert_key(conn, key, key_hash)
            return CreatedKey(key=key, secret=generated.secret)

        return await self._call(_create)

    async def import_key(self, team_id: str, secret: str, *, name: str = "",
                         scopes: Iterable[str] = ("inference",), allowed_models: Iterable[str] = (),
                         budget_usd=None, budget_period: str = "monthly",
                         rpm_limit: int | None = None, tpm_limit: int | None = None) -> ApiKey:
        """Store a key whose secret was chosen elsewhere; returns the existing record if stored."""
        _, key = new_key(team_id, name=name, scopes=scopes, allowed_models=allowed_models,
                         budget_usd=budget_usd, budget_period=budget_period, rpm_limit=rpm_limit,
                         tpm_limit=tpm_limit, expires_at=None, now=self._clock(), secret=secret)
        key_hash = hash_key(secret, self._pepper)

        def _import(conn):
            with immediate(conn):
                if conn.execute("SELECT 1 FROM teams WHERE id = ?", (team_id,)).fetchone() is None:
                    raise NotFound(f"team {team_id!r} not found")
                row = conn.execute("SELECT * FROM api_keys WHERE key_hash = ?",
                                   (key_hash,)).fetchone()
                if row is None:
                    insert_key(conn, key, key_hash)
                    return key
            if row["team_id"] != team_id:
                raise Conflict("this key is already stored for another team")
            return key_from_row(row)

        return await self._call(_import)

    async def get_key(self, key_id: str) -> ApiKey | None:
        """The key record (no secret), or None."""
        def _get(conn):
            row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return None if row is None else key_from_row(row)

        return await self._call(_get)

    async def list_keys(self, team_id: str | None = None) -> list[ApiKey]:
        """Keys of one team or all teams, oldest first, revoked included. No secrets."""
        def _list(conn):
            if team_id is None:
                rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at, id")
            else:
                rows = conn.execute("SELECT * FROM api_keys WHERE team_id = ? "
                                    "ORDER BY created_at, id", (team_id,))
            return [key_from_row(r) for r in rows]

        return await self._call(_list)

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key now (idempotent). NotFound if it does not exist."""
        now = self._clock()

        def _revoke(conn):
            with immediate(conn):
                conn.execute("UPDATE api_keys SET revoked_at = ? "
                             "WHERE id = ? AND revoked_at IS NULL", (now, key_id))
                row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                if row is None:
                    raise NotFound(f"key {key_id!r} not found")
            return key_from_row(row)

        return await self._call(_revoke)

    async def rotate_key(self, key_id: str, *, grace_s: float = 0.0) -> CreatedKey:
        """Replace a key; the old one works for ``grace_s`` more seconds."""
        now = self._clock()

        def _rotate(conn):
            with immediate(conn):
                row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                if row is None:
                    raise NotFound(f"key {key_id!r} not found")
                old = key_from_row(row)
                if not old.is_active(now):
                    raise Conflict(f"key {key_id!r} is revoked or expired")
                generated, new = rotated_key(old, now=now)
                insert_key(conn, new, hash_key(generated.secret, self._pepper))
                conn.execute("UPDATE api_keys SET expires_at = ?, replaced_by = ? WHERE id = ?",
                             (grace_end(old, grace_s, now), new.id, old.id))
            return CreatedKey(key=new, secret=generated.secret)

        return await self._call(_rotate)

    async def lookup(self, secret: str) -> Principal | None:
        """Authenticate a presented key; None unless active and its team exists."""
        if not isinstance(secret, str) or not secret:
            return None
        key_id = key_id_of(secret)
        key_hash = hash_key(secret, self._pepper) if key_id is None else None
        now = self._clock()

        def _lookup(conn):
            if key_id is not None:
                row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            else:  # an imported key in a foreign format: found by its hash
                row = conn.execute("SELECT * FROM api_keys WHERE key_hash = ?",
                                   (key_hash,)).fetchone()
            if row is None:
                return None
            team_row = conn.execute("SELECT * FROM teams WHERE id = ?",
                                    (row["team_id"],)).fetchone()
            team = None if team_row is None else team_from_row(team_row)
            return authenticate(secret, row["key_hash"], key_from_row(row), team, self._pepper,
                                now)

        return await self._call_fast(_lookup, writes=False)

    # --- admission -----------------------------------------------------------------------------

    async def reserve(self, principal: Principal, model: str, worst_case_cost_usd,
                      worst_case_tokens: int, *, now: float | None = None,
                      request_id: str | None = None) -> Reservation | Denial:
        """Atomically check and take budgets, RPM and TPM; see the Store protocol."""
        check_reserve_args(model, worst_case_tokens)
        cost = usd_to_micros(worst_case_cost_usd, round_up=True)
        rid = check_request_id(request_id) if request_id is not None else uuid.uuid4().hex
        at = self._clock() if now is None else float(now)
        sweep = at - self._last_sweep >= _SWEEP_EVERY_S or at < self._last_sweep
        if sweep:
            self._last_sweep = at
        return await self._call_fast(admission.reserve, principal, model, cost, worst_case_tokens,
                                     at, rid, self.reservation_ttl_s, sweep)

    async def settle(self, reservation: Reservation, record: UsageRecord) -> bool:
        """Release, charge, refund, append and roll up atomically; False if already settled."""
        if record.request_id != reservation.id:
            raise InvalidInput("record.request_id must equal reservation.id")
        if (record.team_id, record.key_id) != (reservation.team_id, reservation.key_id):
            raise InvalidInput("record team/key differ from the reservation's")
        return await self._call_fast(admission.settle, reservation, record, self._clock())

    async def take_tokens(self, reservation: Reservation, tokens: int, *,
                          now: float | None = None) -> Reservation | Denial:
        """Take more TPM for a reservation; see the Store protocol."""
        at = self._clock() if now is None else float(now)
        return await self._call_fast(admission.take_tokens, reservation, int(tokens), at)

    async def renew(self, reservations, *, now: float | None = None) -> int:
        """Push running requests' holds to expire a full ttl from now; see the Store protocol."""
        if not reservations:
            return 0
        at = self._clock() if now is None else float(now)
        return await self._call_fast(admission.renew, [r.id for r in reservations], at, self.reservation_ttl_s)

    # --- reports -------------------------------------------------------------------------------

    async def usage_report(self, start, end, group_by: Sequence[str] = (), *,
                           team_id: str | None = None) -> list[UsageRow]:
        """Sums from the hourly rollups; see the Store protocol."""
        columns = check_group_by(group_by)
        first, last = hour_range(to_epoch(start), to_epoch(end))
        # Pre-group in SQL so only one row per group and time bucket leaves the database.
        dims = {"team": "team_id", "key": "key_id", "requested_model": "requested_model",
                "model": "routed_model"}
        select = [f"{col}" if name in columns else f"'' AS {col}" for name, col in dims.items()]
        if "hour" in columns:
            bucket = "hour"
        elif "day" in columns:
            bucket = "(hour / 24) * 24"
        else:
            bucket = "0"
        where, params = "hour >= ? AND hour < ?", [first, last]
        if team_id is not None:
            where, params = where + " AND team_id = ?", params + [team_id]
        sql = (f"SELECT {bucket} AS hour, {', '.join(select)}, SUM(requests), SUM(prompt_tokens), "
               "SUM(completion_tokens), SUM(cost_micros), SUM(baseline_micros), SUM(gpu_micros), "
               f"SUM(errors) FROM usage_rollups WHERE {where} GROUP BY 1, 2, 3, 4, 5")

        def _report(conn):
            return [RollupRow(r[0], r[1], r[2], r[3], r[4], *r[5:])
                    for r in conn.execute(sql, params)]

        return aggregate(await self._call(_report), columns)

    async def usage_records(self, start, end, *, team_id: str | None = None,
                            limit: int = 1000) -> list[UsageRecord]:
        """Raw ledger records with start <= time < end, oldest first."""
        limit = check_count(limit, "limit")
        lo, hi = to_epoch(start), to_epoch(end)
        if team_id is None:
            sql, params = ("SELECT * FROM usage_records WHERE time >= ? AND time < ? "
                           "ORDER BY time, request_id LIMIT ?", (lo, hi, int(limit)))
        else:
            sql, params = ("SELECT * FROM usage_records WHERE team_id = ? AND time >= ? "
                           "AND time < ? ORDER BY time, request_id LIMIT ?",
                           (team_id, lo, hi, int(limit)))
        return await self._call(
            lambda conn: [record_from_row(r) for r in conn.execute(sql, params)])

    async def spend(self, team_id: str, *, now: float | None = None) -> Spend:
        """The team's budget position in its current period."""
        at = self._clock() if now is None else float(now)
        check_id(team_id, "team id")

        def _spend(conn):
            row = conn.execute("SELECT * FROM teams WHERE id = ?", (team_id,)).fetchone()
            if row is None:
                raise NotFound(f"team {team_id!r} not found")
            window = period_window(row["budget_period"], at)
            spent = admission.spent_micros(conn, "team", team_id, window.key)
            held = admission.held_micros(conn, "team", team_id, window.key, at)
            return row["budget_period"], row["budget_micros"], window, spent, held

        period, budget, window, spent, held = await self._call(_spend)
        return Spend(team_id=team_id, budget_period=period, period_start=window.start,
                     period_end=window.end, budget_usd=optional_micros_to_usd(budget),
                     spent_usd=micros_to_usd(spent), reserved_usd=micros_to_usd(held),
                     remaining_usd=None if budget is None else micros_to_usd(
                         max(0, budget - spent - held)))


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def _ignore_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed checkpoint is retried by the next one
