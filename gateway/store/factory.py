"""open_store(url): pick the backend from a URL.

- ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (SQLAlchemy's convention:
  the path is what follows the third slash)
- ``redis://host:port/db``, ``rediss://…`` (TLS), ``unix:///path/redis.sock?db=0``; an optional
  ``prefix`` query parameter sets the key prefix (default ``mg:``)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.store.errors import InvalidInput
from gateway.store.protocol import Store


def open_store(url: str, *, pepper: bytes | str | None = None,
               clock: Callable[[], float] = time.time,
               reservation_ttl_s: float = 600.0, outcome_retention_s: float | None = None,
               record_retention_s: float | None = None, rollup_retention_s: float | None = None) -> Store:
    """Create the store a URL names. No I/O happens until the first call. ``outcome_retention_s``,
    ``record_retention_s``, ``rollup_retention_s``: how long Redis keeps routed requests and
    outcomes, usage records, and hourly rollups (SQLite keeps them until deleted)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise InvalidInput(f"expected sqlite:///relative.db or sqlite:////abs.db, got {url!r}")
        if parts.path[1:] == ":memory:":
            raise InvalidInput("an in-memory SQLite store cannot be shared; use a file")
        from gateway.store.sqlite_store import SQLiteStore

        return SQLiteStore(parts.path[1:], pepper=pepper, clock=clock,
                           reservation_ttl_s=reservation_ttl_s)
    if parts.scheme in ("redis", "rediss", "unix"):
        from gateway.store.redis_store import RedisStore

        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), "mg:")
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        clean = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
        given = {"outcome_retention_s": outcome_retention_s, "record_retention_s": record_retention_s,
                 "rollup_retention_s": rollup_retention_s}
        retention = {k: v for k, v in given.items() if v is not None}
        return RedisStore(clean, prefix=prefix, pepper=pepper, clock=clock,
                          reservation_ttl_s=reservation_ttl_s, **retention)
    raise InvalidInput(f"unsupported store URL {url!r}; use sqlite:///… or redis://…")
