"""A key removed from the YAML stops working at the next start (issue 19 item 14): keys the YAML
declares are imported marked as the config's (scope `config`); at start, a marked key the YAML
no longer declares is revoked. Keys made through the admin API are never touched. Through a
real server restarted on the same store (a real SQLite file, a real redis-server)."""

from __future__ import annotations

import httpx
import pytest

from support import KEY_ALPHA, KEY_BETA, ServerThread
from tenancy_testkit import Admin, ADMIN_KEY, redis_prefix, tenancy_config


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/muxgate.db"
    return f"{request.getfixturevalue('redis_url')}?prefix={redis_prefix()}"


def _serve(zoo_dir, store_url, keys):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    config = tenancy_config(zoo_dir, store_url)
    config["keys"] = keys
    cfg = parse_config(config)
    return ServerThread(create_app(cfg, make_backend(cfg, use_ray=False)))


def _status(server, key):
    return httpx.get(server.base_url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30).status_code


def test_a_key_gone_from_the_yaml_is_revoked_at_the_next_start(zoo_dir, store_url):
    alpha = {"team": "alpha", "name": "ci", "key": KEY_ALPHA}
    beta = {"team": "beta", "name": "ci", "key": KEY_BETA}
    with _serve(zoo_dir, store_url, [alpha, beta]) as server:
        assert (_status(server, KEY_ALPHA), _status(server, KEY_BETA)) == (200, 200)
        made = Admin(server.base_url, ADMIN_KEY).call("POST", "/v1/admin/keys", json={"team": "beta", "name": "api"})
        api_key = made["secret"]
        assert _status(server, api_key) == 200
    with _serve(zoo_dir, store_url, [alpha]) as server:  # beta's key is no longer in the YAML
        assert _status(server, KEY_ALPHA) == 200
        assert _status(server, KEY_BETA) == 401
        assert _status(server, api_key) == 200  # made through the admin API: not the YAML's to revoke
    with _serve(zoo_dir, store_url, [alpha, beta]) as server:  # back in the YAML: stays revoked
        assert _status(server, KEY_BETA) == 401
