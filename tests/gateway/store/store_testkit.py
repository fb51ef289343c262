"""Helpers for the store contract suite: a fake clock, a private redis-server, backends that
open several stores on one shared database, usage-record builders and the worker that other
OS processes run. Imported by conftest.py and the tests (and by spawned child processes)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import redis

from gateway.store import Principal, Reservation, Store, StoreUnavailable, UsageRecord, open_store

from loadtests.chaos_kit import RedisProcess  # noqa: E402
from support import HAVE_REDIS_SERVER  # noqa: E402,F401  (re-exported for the tests)

# 2025-01-15 10:30:00 UTC, a Wednesday in the middle of a month.
T0 = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc).timestamp()


class FakeClock:
    """An injectable clock that only moves when told to."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def RedisServer(workdir: Path) -> RedisProcess:
    """A private redis-server without persistence on a free local port (the chaos bench's)."""
    return RedisProcess(workdir, persistent=False)


class Backend:
    """One shared database (a SQLite file, or a Redis db under a per-test key prefix) from
    which tests open as many independent store instances as they like."""

    def __init__(self, kind: str, *, sqlite_path: Path | None = None, redis_url: str | None = None):
        self.kind = kind
        self.sqlite_path = sqlite_path
        self.redis_url = redis_url
        self.prefix = f"mgtest:{uuid.uuid4().hex[:10]}:"
        self._opened: list[Store] = []

    @property
    def url(self) -> str:
        """The open_store URL of this backend, usable from another process."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.sqlite_path.resolve()}"
        return f"{self.redis_url}?prefix={self.prefix}"

    def open(self, *, clock=time.time, reservation_ttl_s: float = 600.0, pepper=None) -> Store:
        """A new store instance (own connection/thread/pool) on the shared backend."""
        store = open_store(self.url, clock=clock, reservation_ttl_s=reservation_ttl_s,
                           pepper=pepper)
        self._opened.append(store)
        return store

    def raw_dump(self) -> bytes:
        """Everything the backend holds, as bytes, to prove what is (not) stored."""
        if self.kind == "sqlite":
            parts = [p.read_bytes() for p in self.sqlite_path.parent.glob(
                self.sqlite_path.name + "*")]
            return b"".join(parts)
        client = redis.Redis.from_url(self.redis_url)
        try:
            chunks = []
            for name in client.scan_iter(match=self.prefix + "*"):
                kind = client.type(name)
                if kind == b"hash":
                    chunks += [k + v for k, v in client.hgetall(name).items()]
                elif kind == b"string":
                    chunks.append(client.get(name))
                elif kind == b"zset":
                    chunks += client.zrange(name, 0, -1)
                elif kind == b"set":
                    chunks += list(client.smembers(name))
            return b"\n".join(chunks)
        finally:
            client.close()

    async def aclose(self) -> None:
        for store in self._opened:
            await store.close()
        if self.kind == "redis":
            client = redis.Redis.from_url(self.redis_url)
            try:
                names = list(client.scan_iter(match=self.prefix + "*", count=1000))
                for i in range(0, len(names), 500):
                    client.delete(*names[i:i + 500])
            finally:
                client.close()


def usage_for(reservation: Reservation, *, cost_usd="0", prompt_tokens: int = 10,
              completion_tokens: int = 20, time_s: float | None = None, status: str = "ok",
              routed_model: str | None = None, baseline_cost_usd=None,
              gpu_seconds: float = 0.0) -> UsageRecord:
    """The usage record a gateway would settle for ``reservation``."""
    return UsageRecord(
        request_id=reservation.id,
        time=reservation.created_at if time_s is None else time_s,
        team_id=reservation.team_id,
        key_id=reservation.key_id,
        requested_model=reservation.model,
        routed_model=routed_model or reservation.model,
        route_reason="test",
        route_score=0.5,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
        baseline_cost_usd=cost_usd if baseline_cost_usd is None else baseline_cost_usd,
        gpu_seconds=gpu_seconds,
        latency_ms=12.5,
        ttft_ms=3.0,
        status=status,
    )


def reserve_in_child_process(url: str, principal: Principal, attempts: int, cost_usd: str,
                             barrier, results) -> None:
    """Run in a separate OS process: wait for the sibling, then fire ``attempts`` concurrent
    reserves and send back the reservations that were admitted."""

    async def main() -> list[Reservation]:
        store = open_store(url)
        try:
            await store.ping()  # connect (and create the schema) before the race starts
            barrier.wait(timeout=60)
            outcomes = await asyncio.gather(*(
                store.reserve(principal, "small", cost_usd, 100) for _ in range(attempts)))
            return [o for o in outcomes if isinstance(o, Reservation)]
        finally:
            await store.close()

    results.put(asyncio.run(main()))


def money(value: str) -> Decimal:
    """Shorthand for the six-decimal Decimal the store returns."""
    return Decimal(value).quantize(Decimal("0.000001"))


class FlakyStore:
    """Wraps a real store; its settle fails with ``error`` the next ``failures`` times."""

    def __init__(self, store, failures: int, error: Exception | None = None) -> None:
        self._store = store
        self.failures = failures
        self.error = error or StoreUnavailable("backend down (simulated)")
        self.attempts = 0

    async def settle(self, reservation, record):
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return await self._store.settle(reservation, record)


async def acme_reservations(store, n):
    """n reservations of $0.50 on a fresh team 'acme' with a $100 budget and one key."""
    await store.create_team("Acme", team_id="acme", budget_usd="100")
    principal = await store.lookup((await store.create_key("acme")).secret)
    return [await store.reserve(principal, "small", "0.5", 100) for _ in range(n)]


def as_older_schema(path: Path, statements: list[str], version: int) -> None:
    """Make a SQLite store file what an older muxgate wrote: run ``statements`` (dropping what
    later schemas added) and set ``user_version`` to ``version``, so a reopen must migrate it."""
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
