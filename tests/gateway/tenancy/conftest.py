"""Fixtures of the tenancy tests: a gateway with a real SQLite store (in-process uvicorn), and a
private redis-server for the tests that run several gateway processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# --import-mode=importlib keeps test folders off sys.path; the kit is imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from support import ServerThread  # noqa: E402
from tenancy_testkit import tenancy_config  # noqa: E402


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def tenant_gateway(zoo_dir, tmp_path_factory):
    """A gateway (in-process pool, both test models) on its own SQLite store."""
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    db = tmp_path_factory.mktemp("tenancy") / "muxgate.db"
    cfg = parse_config(tenancy_config(zoo_dir, f"sqlite:///{db}"))
    backend = make_backend(cfg, use_ray=False)
    with ServerThread(create_app(cfg, backend)) as server:
        server.db = db
        server.config = cfg
        yield server


