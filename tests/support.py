"""Test helpers importable from any test module (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import shutil

import uvicorn

REPO = Path(__file__).resolve().parent.parent
# Built once per machine and reused: the zoo is deterministic, so a cached copy is identical.
TEST_ZOO = Path(os.environ.get("MUXGATE_TEST_ZOO", REPO / "var" / "test-zoo"))
TEST_MODELS = ["mux-2m", "mux-5m"]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
HAVE_REDIS_SERVER = Path(REDIS_SERVER).exists()
SHARED_REDIS_URL = "redis://127.0.0.1:6379/13"  # fallback: a dedicated db and the tests' own prefixes
KEY_ALPHA = "mg-test-alpha-0123456789abcdef"
KEY_BETA = "mg-test-beta-0123456789abcdef"
ADMIN_KEY = "mg-test-admin-0123456789abcdef"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_config(zoo_dir: Path, **overrides) -> dict:
    """A config dict serving the two smallest zoo models, with two teams' keys."""
    config = {
        "version": 1,
        # many tests fail auth on purpose; the failed-auth limit has its own tests
        "server": {"default_max_tokens": 16, "auth_failures_per_minute": 0},
        "keys": [{"team": "alpha", "name": "ci", "key": KEY_ALPHA}, {"team": "beta", "name": "ci", "key": KEY_BETA}],
        "zoo": {"dir": str(zoo_dir), "build_on_start": False},
        "models": [{"name": n, "zoo": True} for n in TEST_MODELS],
        "pool": {"backend": "inprocess", "torch_threads": 1},
        "routing": {"default_model": "mux-2m"},
        # each config its own SQLite file: tests never share budgets or ledgers by accident
        "store": {"url": f"sqlite:///{tempfile.mkdtemp(prefix='mg-test-')}/muxgate.db"},
        "admin": {"key": ADMIN_KEY},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


class ServerThread:
    """A real uvicorn server on a free port, in a background thread."""

    def __init__(self, app):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)




class WrappedBackend:
    """A real backend behind a test's own `generate`; everything else goes to it unchanged."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, model, req):
        return self.inner.generate(model, req)

    async def models(self):
        return await self.inner.models()

    async def stats(self):
        return await self.inner.stats()

    async def close(self):
        await self.inner.close()


def wait_until(predicate, timeout_s: float = 15.0, every_s: float = 0.05, what: str = "the condition"):
    """The predicate's first truthy value, polled every ``every_s``; AssertionError naming ``what``
    if it stays falsy for ``timeout_s`` (for work a server finishes in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


async def engine_drained(engine, polls: int = 200, every_s: float = 0.01) -> bool:
    """Whether the engine's in-flight count reaches 0 within polls x every_s (a stream a client
    closed frees its sequence at the engine's next step)."""
    import asyncio

    for _ in range(polls):
        if engine.in_flight == 0:
            return True
        await asyncio.sleep(every_s)
    return False
