"""Fixtures of the reliability tests: one `muxgate serve --no-ray` process on a SQLite store
serving mux-2m, mux-5m and three models that cannot load (loadtests/chaos_faults.py), shared by
the tests that do not kill anything."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from loadtests.chaos_faults import sqlite_gateway_config, warm
from loadtests.chaos_kit import GatewayProcess
from loadtests.chaos_ledger import Admin

# --import-mode=importlib keeps test folders off sys.path; the kit is imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from reliability_kit import server_options  # noqa: E402


@pytest.fixture(scope="session")
def sqlite_gateway(zoo_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reliability-gateway")
    gw = GatewayProcess(sqlite_gateway_config(zoo_dir, workdir, **server_options()), workdir, "gateway")
    gw.start()
    try:
        gw.wait_ready()

        async def setup() -> str:
            admin = Admin(gw.base_url)
            try:
                key = await admin.open_team("reliability")
            finally:
                await admin.aclose()
            await warm(gw.base_url, key)
            await warm(gw.base_url, key, "mux-5m")  # loads count against the first-token timeout
            return key

        gw.key = asyncio.run(setup())
        yield gw
    finally:
        gw.stop()
