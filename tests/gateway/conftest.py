"""Fixtures of the gateway's agent tests: the fake upstream that answers tool calls and JSON, and a
gateway serving it as the model `remote` beside the test zoo."""

import sys
from pathlib import Path

import pytest

from support import ServerThread, make_config

# pytest runs with --import-mode=importlib (test folders are not on sys.path): the gateway tests'
# own helper modules (learning_testkit) are imported by name
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def upstream():
    from loadtests import fake_upstream

    with ServerThread(fake_upstream.app) as server:
        yield server


@pytest.fixture(scope="module")
def remote_gateway(upstream, zoo_dir):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    config = make_config(zoo_dir)
    config["models"] = config["models"] + [{"name": "remote", "upstream": {"base_url": upstream.base_url + "/v1",
                                                                            "model": "fake"}}]
    cfg = parse_config(config)
    with ServerThread(create_app(cfg, make_backend(cfg, use_ray=False))) as server:
        yield server
