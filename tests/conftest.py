"""Shared fixtures: a small offline zoo, configs, and real uvicorn servers on free ports."""

from __future__ import annotations

from pathlib import Path

import pytest


from support import KEY_ALPHA, TEST_MODELS, TEST_ZOO, ServerThread, make_config  # noqa: F401

@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from workers.zoo import build_zoo

    build_zoo(TEST_ZOO, TEST_MODELS, progress=False)
    return TEST_ZOO


@pytest.fixture
def start_server():
    """Factory: start_server(config_dict, backend=None) -> running ServerThread (stopped at teardown)."""
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    running = []

    def start(config: dict, backend=None) -> ServerThread:
        cfg = parse_config(config)
        server = ServerThread(create_app(cfg, backend or make_backend(cfg, use_ray=False)))
        running.append(server.__enter__())
        return server

    yield start
    for server in running:
        server.__exit__()


@pytest.fixture(scope="module")
def gateway(zoo_dir):
    """The default test gateway (in-process pool), shared by a module's tests."""
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    cfg = parse_config(make_config(zoo_dir))
    backend = make_backend(cfg, use_ray=False)
    with ServerThread(create_app(cfg, backend)) as server:
        server.backend = backend
        yield server


@pytest.fixture
def openai_client(gateway):
    import openai

    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server for the session. MUXGATE_TEST_REDIS_URL selects an external Redis
    instead (e.g. a CI service); without the binary, the machine's Redis on 6379 is used. Tests
    only touch keys under their own random prefix and delete them afterwards."""
    import os

    import redis

    from loadtests.chaos_kit import RedisProcess
    from support import HAVE_REDIS_SERVER, SHARED_REDIS_URL

    external = os.environ.get("MUXGATE_TEST_REDIS_URL") or (None if HAVE_REDIS_SERVER else SHARED_REDIS_URL)
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
    server = RedisProcess(tmp_path_factory.mktemp("redis"), persistent=False).start()
    try:
        yield server.url
    finally:
        server.stop()
