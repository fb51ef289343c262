"""Fixtures of the store contract suite: every test that takes ``backend`` runs once against a
real SQLite file and once against a real (private) redis-server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis

# The project runs pytest with --import-mode=importlib, which does not put test folders on
# sys.path; the helpers module must be importable by name (also in spawned child processes).
sys.path.insert(0, str(Path(__file__).parent))

from store_testkit import (  # noqa: E402
    HAVE_REDIS_SERVER,
    SHARED_REDIS_URL,
    Backend,
    RedisServer,
)


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server for the session. MUXGATE_TEST_REDIS_URL selects an external Redis
    instead (e.g. a CI service); without the binary, the machine's Redis on 6379 is used. Tests
    only touch keys under their own random prefix and delete them afterwards."""
    external = os.environ.get("MUXGATE_TEST_REDIS_URL") or (
        None if HAVE_REDIS_SERVER else SHARED_REDIS_URL)
    if external:
        client = redis.Redis.from_url(external, socket_connect_timeout=1)
        try:
            client.ping()
        except redis.ConnectionError:
            pytest.skip(f"no redis-server binary and no Redis at {external}")
        finally:
            client.close()
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request, tmp_path):
    """A fresh, empty shared backend; tests open store instances on it with backend.open()."""
    if request.param == "sqlite":
        shared = Backend("sqlite", sqlite_path=tmp_path / "muxgate.db")
    else:
        shared = Backend("redis", redis_url=request.getfixturevalue("redis_url"))
    try:
        yield shared
    finally:
        await shared.aclose()
