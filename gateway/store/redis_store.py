"""RedisStore: the shared store for many gateway processes (redis.asyncio).

Every state change is one Lua script (see :mod:`gateway.store.redis_scripts`), so admission,
settlement and key changes are atomic across processes and machines, and a revoked key fails on
every gateway at its next lookup. Reads that need no atomicity use plain commands and pipelines.

redis-py retries a command once after a connection error. The request-path scripts (reserve,
settle) and create_key/revoke_key/update_team are idempotent, so that retry is safe; an admin
create_team/delete_team/rotate_key retried after a lost reply may report Conflict/NotFound for
work that was in fact done (or rotate twice).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from gateway.tenancy.keys import hash_key
from gateway.store import redis_scripts as scripts
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
from gateway.store.periods import BUDGET_PERIODS, hour_bucket, period_window
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
from gateway.store.redis_outcomes import DEFAULT_OUTCOME_RETENTION_S, RedisOutcomes
from gateway.store.redis_codec import (
    flatten,
    key_fields,
    key_from_fields,
    pairs_to_dict,
    team_fields,
    team_from_fields,
)
from gateway.store.reports import (
    ROLLUP_METRICS,
    RollupRow,
    aggregate,
    check_group_by,
    hour_range,
    rollup_increments,
)
from gateway.store.validation import check_count, check_id, check_request_id, to_epoch

# How long per-period counters outlive their last write (real time). Past periods are only
# read through the rollups, so the counters can go.
_RETENTION_S = {"d": 3 * 86400, "m": 70 * 86400}
_CELL_SEP = "\x1f"

# Field names of Team that update_team may change, mapped to their hash fields.
_TEAM_UPDATE_FIELDS = {"name": "name", "budget_usd": "budget_micros",
                       "budget_period": "budget_period", "rpm_limit": "rpm_limit",
                       "tpm_limit": "tpm_limit", "allowed_models": "allowed_models", "share": "share"}


def _retention(period_key: str) -> str:
    seconds = _RETENTION_S.get(period_key[:1]) if period_key != "total" else None
    return "" if seconds is None else str(seconds)


# Usage records (one JSON per request) are kept 90 days; the hourly rollups that reports read,
# two years. SQLite keeps both until deleted.
DEFAULT_RECORD_RETENTION_S = 90 * 86400.0
DEFAULT_ROLLUP_RETENTION_S = 730 * 86400.0


class RedisStore(RedisOutcomes):
    """The Store protocol on one Redis server (standalone or Sentinel-managed; not Cluster)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "mg:",
                 pepper: bytes | str | None = None, clock: Callable[[], float] = time.time,
                 reservation_ttl_s: float = 600.0, max_connections: int = 64,
                 socket_timeout_s: float = 5.0,
                 outcome_retention_s: float = DEFAULT_OUTCOME_RETENTION_S,
                 server_time: bool | None = None,
                 record_retention_s: float = DEFAULT_RECORD_RETENTION_S,
                 rollup_retention_s: float = DEFAULT_ROLLUP_RETENTION_S) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise InvalidInput(f"invalid redis key prefix {prefix!r}")
        self.url = url
        self.prefix = prefix
        self._pepper = checked_pepper(pepper)
        self._clock = clock
        # Admission's clock (GCRA, hold expiry) is the Redis server's TIME, one clock for every
        # gateway however theirs drift; an injected clock (tests) drives the scripts instead.
        self._server_time = (clock is time.time) if server_time is None else server_time
        self.reservation_ttl_s = float(reservation_ttl_s)
        self.record_retention_s = float(record_retention_s)  # usage records and the ledger's indexes
        self.rollup_retention_s = float(rollup_retention_s)  # hourly rollups, from an hour's last write
        self.outcome_retention_s = float(outcome_retention_s)  # routed requests and outcomes
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout_s,
            decode_responses=True, socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # One quick retry rides over a dropped pooled connection (e.g. after a Redis
            # restart); longer outages surface as StoreUnavailable for the caller to handle.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1))
        self._redis = aioredis.Redis.from_pool(pool)
        self._scripts = {name: self._redis.register_script(getattr(scripts, name)) for name in (
            "RESERVE", "SETTLE", "CREATE_TEAM", "UPDATE_TEAM", "DELETE_TEAM", "CREATE_KEY",
            "REVOKE_KEY", "ROTATE_KEY", "TAKE_TOKENS", "RENEW")}

    # --- plumbing ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Translate redis-py errors into the store's typed errors."""
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError,
                redis_errors.ReadOnlyError, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def _run(self, name: str, keys: Sequence[str] = (), args: Sequence = ()):
        async with self._errors():
            return await self._scripts[name](keys=list(keys), args=list(args))

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        async with self._errors():
            await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    # --- teams ---------------------------------------------------------------------------------

    async def create_team(self, name: str, *, team_id: str | None = None, budget_usd=None,
                          budget_period: str = "monthly", rpm_limit: int | None = None,
                          tpm_limit: int | None = None, allowed_models: Iterable[str] = (),
                          share: float = 1.0) -> Team:
        """Create a team. Raises Conflict if the id is taken."""
        team = new_team(name, team_id=team_id, budget_usd=budget_usd, budget_period=budget_period,
                        rpm_limit=rpm_limit, tpm_limit=tpm_limit, allowed_models=allowed_models,
                        now=self._clock(), share=share)
        created = await self._run("CREATE_TEAM", [self._k("team", team.id), self._k("teams")],
                                  [team.id, repr(team.created_at), *flatten(team_fields(team))])
        if not created:
            raise Conflict(f"team {team.id!r} already exists")
        return team

    async def get_team(self, team_id: str) -> Team | None:
        """The team, or None."""
        async with self._errors():
            fields = await self._redis.hgetall(self._k("team", team_id))
        return team_from_fields(fields) if fields else None

    async def list_teams(self) -> list[Team]:
        """All teams, oldest first."""
        async with self._errors():
            ids = await self._redis.zrange(self._k("teams"), 0, -1)
            async with self._redis.pipeline(transaction=False) as pipe:
                for team_id in ids:
                    pipe.hgetall(self._k("team", team_id))
                hashes = await pipe.execute()
        return [team_from_fields(h) for h in hashes if h]

    async def update_team(self, team_id: str, *, name=UNSET, budget_usd=UNSET, budget_period=UNSET,
                          rpm_limit=UNSET, tpm_limit=UNSET, allowed_models=UNSET, share=UNSET) -> Team:
        """Change the given fields; NotFound if the team does not exist."""
        changes = dict(name=name, budget_usd=budget_usd, budget_period=budget_period,
                       rpm_limit=rpm_limit, tpm_limit=tpm_limit, allowed_models=allowed_models,
                       share=share)
        current = await self.get_team(team_id)
        if current is None:
            raise NotFound(f"team {team_id!r} not found")
        fields = team_fields(updated_team(current, **changes))
        # Write only the fields asked for, so concurrent updates of other fields are kept.
        writes = {_TEAM_UPDATE_FIELDS[k]: fields[_TEAM_UPDATE_FIELDS[k]]
                  for k, v in changes.items() if v is not UNSET}
        result = await self._run("UPDATE_TEAM", [self._k("team", team_id)], flatten(writes))
        if not result:
            raise NotFound(f"team {team_id!r} not found")
        return team_from_fields(pairs_to_dict(result))

    async def delete_team(self, team_id: str) -> None:
        """Delete the team, revoke its keys and forget its counters; the ledger stays."""
        now = self._clock()
        counters = []
        for period in BUDGET_PERIODS:
            window = period_window(period, now)
            for kind in ("spent", "held", "holds"):
                counters.append(self._k(kind, "team", team_id, window.key))
        counters += [self._k("rate", "team", team_id, kind) for kind in ("rpm", "tpm")]
        deleted = await self._run(
            "DELETE_TEAM",
            [self._k("team", team_id), self._k("teams"), self._k("team_keys", team_id), *counters],
            [team_id, repr(now), self.prefix])
        if not deleted:
            raise NotFound(f"team {team_id!r} not found")

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
        await self._create_key(key, generated.secret)
        return CreatedKey(key=key, secret=generated.secret)

    async def _create_key(self, key: ApiKey, secret: str) -> ApiKey:
        key_hash = hash_key(secret, self._pepper)
        result = await self._run(
            "CREATE_KEY",
            [self._k("team", key.team_id), self._k("key", key.id), self._k("keys"),
             self._k("team_keys", key.team_id), self._k("keyhash", key_hash)],
            [key.id, repr(key.created_at), *flatten(key_fields(key, key_hash))])
        if result[0] == 0:
            raise NotFound(f"team {key.team_id!r} not found")
        if result[0] == -1:
            raise Conflict(f"key id {key.id!r} already exists")
        if result[0] == 2:
            existing = await self.get_key(result[1])
            if existing is None or existing.team_id != key.team_id:
                raise Conflict("this key is already stored for another team")
            return existing
        return key

    async def import_key(self, team_id: str, secret: str, *, name: str = "",
                         scopes: Iterable[str] = ("inference",), allowed_models: Iterable[str] = (),
                         budget_usd=None, budget_period: str = "monthly",
                         rpm_limit: int | None = None, tpm_limit: int | None = None) -> ApiKey:
        """Store a key whose secret was chosen elsewhere; returns the existing record if stored."""
        _, key = new_key(team_id, name=name, scopes=scopes, allowed_models=allowed_models,
                         budget_usd=budget_usd, budget_period=budget_period, rpm_limit=rpm_limit,
                         tpm_limit=tpm_limit, expires_at=None, now=self._clock(), secret=secret)
        return await self._create_key(key, secret)

    async def get_key(self, key_id: str) -> ApiKey | None:
        """The key record (no secret), or None."""
        async with self._errors():
            fields = await self._redis.hgetall(self._k("key", key_id))
        return key_from_fields(fields) if fields else None

    async def list_keys(self, team_id: str | None = None) -> list[ApiKey]:
        """Keys of one team or all teams, oldest first, revoked included. No secrets."""
        index = self._k("keys") if team_id is None else self._k("team_keys", team_id)
        async with self._errors():
            ids = await self._redis.zrange(index, 0, -1)
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self._k("key", key_id))
                hashes = await pipe.execute()
        return [key_from_fields(h) for h in hashes if h]

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key now (idempotent). NotFound if it does not exist."""
        result = await self._run("REVOKE_KEY", [self._k("key", key_id)], [repr(self._clock())])
        if not result:
            raise NotFound(f"key {key_id!r} not found")
        return key_from_fields(pairs_to_dict(result))

    async def rotate_key(self, key_id: str, *, grace_s: float = 0.0) -> CreatedKey:
        """Replace a key; the old one works for ``grace_s`` more seconds."""
        now = self._clock()
        old = await self.get_key(key_id)
        if old is None:
            raise NotFound(f"key {key_id!r} not found")
        if not old.is_active(now):
            raise Conflict(f"key {key_id!r} is revoked or expired")
        generated, new = rotated_key(old, now=now)
        new_hash = hash_key(generated.secret, self._pepper)
        result = await self._run(
            "ROTATE_KEY",
            [self._k("key", key_id), self._k("key", new.id), self._k("keys"),
             self._k("team_keys", new.team_id), self._k("keyhash", new_hash)],
            [repr(now), repr(grace_end(old, grace_s, now)), new.id, repr(new.created_at),
             *flatten(key_fields(new, new_hash))])
        if result == 0:
            raise NotFound(f"key {key_id!r} not found")
        if result == -1:
            raise Conflict(f"key {key_id!r} is revoked or expired")
        return CreatedKey(key=new, secret=generated.secret)

    async def lookup(self, secret: str) -> Principal | None:
        """Authenticate a presented key; None unless active and its team exists."""
        if not isinstance(secret, str) or not secret:
            return None
        key_id = key_id_of(secret)
        now = self._clock()
        async with self._errors():
            if key_id is None:  # an imported key in a foreign format: found by its hash
                key_id = await self._redis.get(self._k("keyhash", hash_key(secret, self._pepper)))
                if key_id is None:
                    return None
            fields = await self._redis.hgetall(self._k("key", key_id))
            if not fields:
                return None
            team_hash = await self._redis.hgetall(self._k("team", fields["team_id"]))
        return authenticate(secret, fields.get("hash"), key_from_fields(fields),
                            team_from_fields(team_hash) if team_hash else None, self._pepper, now)

    # --- admission -----------------------------------------------------------------------------

    async def reserve(self, principal: Principal, model: str, worst_case_cost_usd,
                      worst_case_tokens: int, *, now: float | None = None,
                      request_id: str | None = None) -> Reservation | Denial:
        """Atomically check and take budgets, RPM and TPM; see the Store protocol."""
        check_reserve_args(model, worst_case_tokens)
        cost = usd_to_micros(worst_case_cost_usd, round_up=True)
        rid = check_request_id(request_id) if request_id is not None else uuid.uuid4().hex
        at = self._clock() if now is None else float(now)
        daily, monthly = period_window("daily", at), period_window("monthly", at)
        result = await self._run("RESERVE", (), [
            self.prefix, principal.team_id, principal.key_id, model, str(cost),
            str(worst_case_tokens), self._script_now(now), repr(self.reservation_ttl_s), rid,
            daily.key, repr(daily.end), _retention(daily.key),
            monthly.key, repr(monthly.end), _retention(monthly.key)])
        status = result[0]
        if status == "error":
            raise NotFound(f"{result[1].replace('_', ' ')}: {principal.team_id}/{principal.key_id}")
        if status == "deny":
            return Denial.of(result[1], float(result[2]) if result[2] else None)
        return Reservation(id=rid, team_id=principal.team_id, key_id=principal.key_id, model=model,
                           cost_usd=micros_to_usd(cost), tokens=worst_case_tokens,
                           created_at=float(result[3]), expires_at=float(result[4]),
                           team_period=result[1], key_period=result[2], tpm_limited=bool(result[5]))

    def _script_now(self, now: float | None = None) -> str:
        """The time a script runs at: '' (the server's TIME) unless given or the clock is injected."""
        if now is not None:
            return repr(float(now))
        return "" if self._server_time else repr(self._clock())

    async def take_tokens(self, reservation: Reservation, tokens: int, *,
                          now: float | None = None) -> Reservation | Denial:
        """Take more TPM for a reservation; see the Store protocol."""
        if tokens <= 0:
            return reservation
        result = await self._run("TAKE_TOKENS", (), [
            self.prefix, reservation.team_id, reservation.key_id, str(int(tokens)), self._script_now(now),
            str(reservation.tokens)])
        if result[0] == "deny":
            return Denial.of(result[1], float(result[2]) if result[2] else None)
        return replace(reservation, tokens=reservation.tokens + int(tokens))

    async def renew(self, reservations: Sequence[Reservation], *, now: float | None = None) -> int:
        """Push running requests' holds to expire a full ttl from now; see the Store protocol."""
        args = [x for r in reservations for x in (r.id, f"team:{r.team_id}:{r.team_period}",
                                                  f"key:{r.key_id}:{r.key_period}", str(r.cost_micros))]
        if not args:
            return 0
        return int(await self._run("RENEW", (), [self.prefix, self._script_now(now),
                                                 repr(self.reservation_ttl_s), *args]))

    async def settle(self, reservation: Reservation, record: UsageRecord) -> bool:
        """Release, charge, refund, append and roll up atomically; False if already settled."""
        if record.request_id != reservation.id:
            raise InvalidInput("record.request_id must equal reservation.id")
        if (record.team_id, record.key_id) != (reservation.team_id, reservation.key_id):
            raise InvalidInput("record team/key differ from the reservation's")
        inc = rollup_increments(record)
        unused = reservation.tokens - record.prompt_tokens - record.completion_tokens
        cell = _CELL_SEP.join((record.key_id, record.requested_model, record.routed_model))
        metrics = [str(x) for name in ROLLUP_METRICS for x in (name, inc[name])]
        applied = await self._run("SETTLE", (), [
            self.prefix, reservation.id, reservation.team_id, reservation.key_id,
            reservation.team_period, reservation.key_period, str(reservation.cost_micros),
            str(max(0, unused)), str(inc["cost_micros"]), json.dumps(record.to_json_dict()),
            repr(record.time), str(hour_bucket(record.time)), cell, self._script_now(),
            _retention(reservation.team_period), _retention(reservation.key_period),
            repr(self.record_retention_s), repr(self.rollup_retention_s), *metrics])
        return bool(applied)

    # --- reports -------------------------------------------------------------------------------

    async def usage_report(self, start, end, group_by: Sequence[str] = (), *,
                           team_id: str | None = None) -> list[UsageRow]:
        """Sums from the hourly rollups; see the Store protocol."""
        columns = check_group_by(group_by)
        first, last = hour_range(to_epoch(start), to_epoch(end))
        async with self._errors():
            hours = [int(h) for h in await self._redis.zrangebyscore(
                self._k("rollup_hours"), first, f"({last}")]
            if team_id is not None:
                cells = [(h, team_id) for h in hours]
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for h in hours:
                        pipe.smembers(self._k("rollup_teams", str(h)))
                    teams_per_hour = await pipe.execute()
                cells = [(h, t) for h, teams in zip(hours, teams_per_hour, strict=True)
                         for t in sorted(teams)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for h, t in cells:
                    pipe.hgetall(self._k("rollup", str(h), t))
                hashes = await pipe.execute()
        rows: dict[tuple, RollupRow] = {}
        for (h, t), fields in zip(cells, hashes, strict=True):
            for field, value in fields.items():
                key_id, requested, routed, metric = field.split(_CELL_SEP)
                row = rows.get((h, t, key_id, requested, routed))
                if row is None:
                    row = rows[(h, t, key_id, requested, routed)] = RollupRow(
                        h, t, key_id, requested, routed)
                setattr(row, metric, int(value))
        return aggregate(rows.values(), columns)

    async def usage_records(self, start, end, *, team_id: str | None = None,
                            limit: int = 1000) -> list[UsageRecord]:
        """Raw ledger records with start <= time < end, oldest first."""
        limit = check_count(limit, "limit")
        index = self._k("ledger") if team_id is None else self._k("ledger", "team", team_id)
        async with self._errors():
            ids = await self._redis.zrangebyscore(index, repr(to_epoch(start)),
                                                  f"({to_epoch(end)!r}", start=0, num=int(limit))
            docs = await self._redis.mget([self._k("rec", rid) for rid in ids]) if ids else []
        return [UsageRecord.from_json_dict(json.loads(d)) for d in docs if d]

    async def spend(self, team_id: str, *, now: float | None = None) -> Spend:
        """The team's budget position in its current period."""
        at = self._clock() if now is None else float(now)
        check_id(team_id, "team id")
        async with self._errors():
            period, budget = await self._redis.hmget(self._k("team", team_id),
                                                     ["budget_period", "budget_micros"])
            if period is None:
                raise NotFound(f"team {team_id!r} not found")
            window = period_window(period, at)
            spent = int(await self._redis.get(self._k("spent", "team", team_id, window.key)) or 0)
            # Read-only: sum the unexpired holds instead of relying on the lazily cleaned counter.
            members = await self._redis.zrangebyscore(
                self._k("holds", "team", team_id, window.key), f"({at!r}", "+inf")
        held = sum(int(m.rsplit(":", 1)[1]) for m in members)
        budget_micros = int(budget) if budget else None
        return Spend(team_id=team_id, budget_period=period, period_start=window.start,
                     period_end=window.end, budget_usd=optional_micros_to_usd(budget_micros),
                     spent_usd=micros_to_usd(spent), reserved_usd=micros_to_usd(held),
                     remaining_usd=None if budget_micros is None else micros_to_usd(
                         max(0, budget_micros - spent - held)))
