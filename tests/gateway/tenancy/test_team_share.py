"""A team's fair-share weight lives with the team: set and changed through the admin API (or the
CLI) and seen by the pool within the auth cache TTL, no restart; the YAML's `teams[].share` is
written to the store at start like the team's other fields; without a store the YAML's is used."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from gateway.config import parse_config
from gateway.store import open_store
from gateway.tenancy.wiring import bootstrap
from support import KEY_ALPHA, KEY_BETA, make_config, wait_until
from tenancy_testkit import ADMIN_KEY, Admin, tenancy_config


def spied_weights(server) -> list[tuple[str, float]]:
    """(team, weight) of every request the gateway sends to its backend, in order."""
    backend = server.app.state.gateway.completions.backend
    seen: list[tuple[str, float]] = []
    inner = backend.generate

    def spy(model, req):
        seen.append((req.team, req.weight))
        return inner(model, req)

    backend.generate = spy
    return seen


def sender(server, seen):
    def sent(key: str) -> tuple[str, float]:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=60)
        client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        return seen[-1]
    return sent


def test_an_admin_change_of_a_share_reaches_the_pool_without_a_restart(zoo_dir, tmp_path, start_server):
    config = tenancy_config(zoo_dir, f"sqlite:///{tmp_path / 'muxgate.db'}",
                            teams=[{"id": "alpha", "share": 3}, {"id": "beta"}])
    server = start_server(config)
    seen = spied_weights(server)
    sent = sender(server, seen)
    admin = Admin(server.base_url)
    try:
        assert sent(KEY_ALPHA) == ("alpha", 3.0)  # the YAML's share, from the store
        assert sent(KEY_BETA) == ("beta", 1.0)
        assert admin.team("ml", share=2)["share"] == 2.0
        secret = admin.key("ml")["secret"]
        assert sent(secret) == ("ml", 2.0)

        assert admin.call("PATCH", "/v1/admin/teams/ml", json={"share": 0.5})["share"] == 0.5
        wait_until(lambda: sent(secret) == ("ml", 0.5), timeout_s=10, what="the new share at the pool")
        assert admin.call("PATCH", "/v1/admin/teams/alpha", json={"share": 6})["share"] == 6.0
        wait_until(lambda: sent(KEY_ALPHA) == ("alpha", 6.0), timeout_s=10, what="alpha's new share")
        assert sent(KEY_BETA) == ("beta", 1.0)
        listed = {t["id"]: t["share"] for t in admin.call("GET", "/v1/admin/teams")["data"]}
        assert listed == {**listed, "alpha": 6.0, "beta": 1.0, "ml": 0.5}
        assert admin.call("GET", "/v1/admin/teams/ml")["share"] == 0.5
    finally:
        admin.close()


@pytest.mark.parametrize("share", [0, -2, "two", [1], 1e400])  # 1e400: JSON's way to say infinity
def test_a_share_that_is_not_a_finite_number_above_zero_is_a_400_naming_it(tenant_gateway, share):
    admin = Admin(tenant_gateway.base_url)
    team_id = f"share{uuid.uuid4().hex[:8]}"
    try:
        created = admin.http.post("/v1/admin/teams", content=json.dumps(
            {"id": "badshare", "name": "x", "share": share}).replace("Infinity", "1e400"))
        admin.team(team_id, share=2)
        updated = admin.http.patch(f"/v1/admin/teams/{team_id}", content=json.dumps({"share": share}).replace(
            "Infinity", "1e400"))
        for resp in (created, updated):
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert (error["param"], error["type"], error["code"]) == ("share", "invalid_request_error",
                                                                       "invalid_request")
            assert "share" in error["message"]
        assert admin.http.get("/v1/admin/teams/badshare").status_code == 404
        assert admin.call("GET", f"/v1/admin/teams/{team_id}")["share"] == 2.0
    finally:
        admin.close()


def test_a_share_cannot_be_null(tenant_gateway):
    admin = Admin(tenant_gateway.base_url)
    try:
        admin.team("nullshare", share=2)
        resp = admin.http.patch("/v1/admin/teams/nullshare", json={"share": None})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "share"
        assert admin.call("GET", "/v1/admin/teams/nullshare")["share"] == 2.0
    finally:
        admin.close()


@pytest.mark.anyio
async def test_the_yaml_share_is_written_at_start_and_an_unset_one_keeps_the_stored_value(zoo_dir, tmp_path):
    """The same rule as budgets and limits: a field the YAML sets wins at every start; one it
    leaves out is the store's (what the admin API last set)."""
    config = parse_config(make_config(zoo_dir, store={"url": f"sqlite:///{tmp_path / 'muxgate.db'}"},
                                      teams=[{"id": "alpha", "share": 2}, {"id": "beta", "rpm_limit": 60}]))
    store = open_store(config.store.url)
    try:
        await bootstrap(store, config)
        assert {t.id: t.share for t in await store.list_teams()} == {"alpha": 2.0, "beta": 1.0}
        await store.update_team("alpha", share=5)
        await store.update_team("beta", share=7)
        await bootstrap(store, config)  # the next start
        assert {t.id: t.share for t in await store.list_teams()} == {"alpha": 2.0, "beta": 7.0}
    finally:
        await store.close()


def test_without_a_store_the_yaml_share_is_the_weight(zoo_dir, start_server):
    server = start_server(make_config(zoo_dir, store={"url": None}, admin={"key": ADMIN_KEY, "key_env": None},
                                      teams=[{"id": "alpha", "share": 4}]))
    seen = spied_weights(server)
    sent = sender(server, seen)
    assert sent(KEY_ALPHA) == ("alpha", 4.0)
    assert sent(KEY_BETA) == ("beta", 1.0)  # a team the YAML does not declare: an equal share
    assert httpx.get(server.base_url + "/v1/admin/teams",
                     headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 404
