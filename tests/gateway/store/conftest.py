"""Fixtures of the store contract suite: every test that takes ``backend`` runs once against a
real SQLite file and once against a real (private) redis-server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The project runs pytest with --import-mode=importlib, which does not put test folders on
# sys.path; the helpers module must be importable by name (also in spawned child processes).
sys.path.insert(0, str(Path(__file__).parent))

from store_testkit import Backend  # noqa: E402


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


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
