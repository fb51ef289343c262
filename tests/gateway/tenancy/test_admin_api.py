"""The admin API, key lifecycle, team isolation and admission errors, through a real server and
the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from support import KEY_ALPHA, KEY_BETA
from tenancy_testkit import ADMIN_KEY, Admin

ADMIN_ROUTES = [("GET", "/v1/admin/teams"), ("POST", "/v1/admin/teams"), ("GET", "/v1/admin/teams/alpha"),
                ("PATCH", "/v1/admin/teams/alpha"), ("DELETE", "/v1/admin/teams/alpha"),
                ("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"), ("GET", "/v1/admin/keys/abc"),
                ("POST", "/v1/admin/keys/abc/revoke"), ("POST", "/v1/admin/keys/abc/rotate"), ("GET", "/v1/pool")]


@pytest.fixture(scope="module")
def admin(tenant_gateway):
    client = Admin(tenant_gateway.base_url)
    yield client
    client.close()


def client_for(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(gateway, key: str, model: str = "mux-2m", max_tokens: int = 2):
    return client_for(gateway, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=max_tokens, temperature=0)


def assert_openai_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_endpoints_need_the_admin_key(tenant_gateway, method, path):
    url = tenant_gateway.base_url + path
    assert_openai_error(httpx.request(method, url), 401)
    assert_openai_error(httpx.request(method, url, headers={"authorization": "Bearer mg-nope-0123456789abcdef"}), 401)
    error = assert_openai_error(httpx.request(method, url, headers={"authorization": f"Bearer {KEY_ALPHA}"}), 403)
    assert "admin key" in error["message"]


def test_teams_create_list_show_update_delete(tenant_gateway, admin):
    team = admin.team("crud", budget_usd=2.5, budget_period="daily", rpm_limit=60, allowed_models=["mux-2m"])
    assert team["budget_usd"] == 2.5 and team["rpm_limit"] == 60 and team["allowed_models"] == ["mux-2m"]
    assert "crud" in [t["id"] for t in admin.call("GET", "/v1/admin/teams")["data"]]
    shown = admin.call("GET", "/v1/admin/teams/crud")
    assert shown["spend"]["budget_usd"] == 2.5 and shown["spend"]["spent_usd"] == 0
    updated = admin.call("PATCH", "/v1/admin/teams/crud", json={"budget_usd": None, "tpm_limit": 1000})
    assert updated["budget_usd"] is None and updated["tpm_limit"] == 1000 and updated["rpm_limit"] == 60
    dup = admin.http.post("/v1/admin/teams", json={"id": "crud", "name": "again"})
    assert_openai_error(dup, 409)
    bad = admin.http.post("/v1/admin/teams", json={"id": "x", "name": "x", "rpm_limit": 0})
    assert assert_openai_error(bad, 400)["param"] == "rpm_limit"
    extra = admin.http.post("/v1/admin/teams", json={"name": "x", "colour": "blue"})
    assert "colour" in assert_openai_error(extra, 400)["message"]
    assert admin.call("DELETE", "/v1/admin/teams/crud")["deleted"] is True
    assert_openai_error(admin.http.get("/v1/admin/teams/crud"), 404)


def test_key_secret_is_shown_once_and_stored_only_as_hash(tenant_gateway, admin):
    admin.team("keys")
    created = admin.key("keys", name="ci")
    secret = created["secret"]
    assert secret.startswith(created["display_prefix"]) and len(secret) > 50
    assert ask(tenant_gateway, secret).choices[0].message.content is not None
    listings = [admin.http.get("/v1/admin/keys").text, admin.http.get("/v1/admin/keys?team=keys").text,
                admin.http.get(f"/v1/admin/keys/{created['id']}").text,
                httpx.get(tenant_gateway.base_url + "/v1/keys", headers={"authorization": f"Bearer {secret}"}).text]
    for text in listings:
        assert created["id"] in text and secret not in text and "secret" not in text
    raw = b"".join(p.read_bytes() for p in tenant_gateway.db.parent.glob(tenant_gateway.db.name + "*"))
    assert secret.encode() not in raw and secret.split("_", 1)[1].encode() not in raw


def test_revoked_key_fails_at_once_and_rotation_keeps_the_old_key_for_its_grace(tenant_gateway, admin):
    admin.team("rot")
    old = admin.key("rot", name="svc")
    ask(tenant_gateway, old["secret"])
    rotated = admin.call("POST", f"/v1/admin/keys/{old['id']}/rotate", json={"grace_s": 3600})
    assert rotated["secret"] != old["secret"] and rotated["team"] == "rot"
    ask(tenant_gateway, old["secret"])  # still inside its grace period
    ask(tenant_gateway, rotated["secret"])
    shown = admin.call("GET", f"/v1/admin/keys/{old['id']}")
    assert shown["replaced_by"] == rotated["id"] and shown["expires_at"] is not None

    revoked = admin.call("POST", f"/v1/admin/keys/{old['id']}/revoke")
    assert revoked["active"] is False and revoked["revoked_at"]
    # admission re-reads the key atomically, so even this process's cached lookup cannot admit it
    with pytest.raises(openai.AuthenticationError):
        ask(tenant_gateway, old["secret"])
    again = admin.call("POST", f"/v1/admin/keys/{rotated['id']}/rotate", json={"grace_s": 0})
    with pytest.raises(openai.AuthenticationError):
        ask(tenant_gateway, rotated["secret"])
    ask(tenant_gateway, again["secret"])
    assert_openai_error(admin.http.post(f"/v1/admin/keys/{old['id']}/rotate", json={}), 409)


def test_a_team_key_cannot_read_another_teams_reports_keys_or_usage(tenant_gateway):
    ask(tenant_gateway, KEY_ALPHA)
    ask(tenant_gateway, KEY_BETA)
    alpha = httpx.Client(base_url=tenant_gateway.base_url, headers={"authorization": f"Bearer {KEY_ALPHA}"})
    for path in ("/v1/reports/usage?team=beta", "/v1/keys?team=beta", "/v1/usage?team=beta", "/v1/spend?team=beta",
                 "/reports?team=beta"):
        assert_openai_error(alpha.get(path), 403)
    report = alpha.get("/v1/reports/usage", params={"group_by": "team"}).json()
    assert [r["team"] for r in report["data"]] == ["alpha"]
    assert {k["team"] for k in alpha.get("/v1/keys").json()["data"]} == {"alpha"}
    assert {r["team_id"] for r in alpha.get("/v1/usage").json()["data"]} == {"alpha"}
    assert alpha.get("/v1/spend").json()["team"] == "alpha"
    admin = httpx.Client(base_url=tenant_gateway.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    teams = {r["team"] for r in admin.get("/v1/reports/usage", params={"group_by": "team"}).json()["data"]}
    assert {"alpha", "beta"} <= teams


def test_over_budget_is_429_insufficient_quota_naming_the_limit(tenant_gateway, admin):
    admin.team("poor", budget_usd=0.001, budget_period="daily")
    key = admin.key("poor")["secret"]
    with pytest.raises(openai.RateLimitError) as info:
        ask(tenant_gateway, key)
    body = info.value.response.json()["error"]
    assert info.value.response.status_code == 429
    assert body["code"] == "insufficient_quota" and "team_budget" in body["message"]
    assert info.value.response.headers["x-muxgate-limit"] == "team_budget"
    assert int(info.value.response.headers["retry-after"]) >= 1  # until the day ends
    admin.team("rich")
    capped = admin.key("rich", budget_usd=0.001, budget_period="total")["secret"]
    with pytest.raises(openai.RateLimitError) as info:
        ask(tenant_gateway, capped)
    assert "key_budget" in info.value.response.json()["error"]["message"]


def test_over_rate_is_429_with_retry_after(tenant_gateway, admin):
    admin.team("slow")
    key = admin.key("slow", rpm_limit=1)["secret"]
    ask(tenant_gateway, key)
    with pytest.raises(openai.RateLimitError) as info:
        ask(tenant_gateway, key)
    resp = info.value.response
    assert resp.json()["error"]["code"] == "rate_limit_exceeded" and "key_rpm" in resp.json()["error"]["message"]
    assert 1 <= int(resp.headers["retry-after"]) <= 60


def test_models_outside_the_allow_list_are_refused_and_hidden(tenant_gateway, admin):
    admin.team("narrow", allowed_models=["mux-2m"])
    key = admin.key("narrow")["secret"]
    ask(tenant_gateway, key, "mux-2m")
    with pytest.raises(openai.PermissionDeniedError) as info:
        ask(tenant_gateway, key, "mux-5m")
    assert info.value.response.json()["error"]["code"] == "model_not_allowed"
    assert [m.id for m in client_for(tenant_gateway, key).models.list()] == ["auto", "mux-2m"]


def test_pool_stats_and_tenancy_metrics(tenant_gateway, admin):
    replicas = admin.call("GET", "/v1/pool")
    assert isinstance(replicas, list) and replicas and "resident" in replicas[0]
    text = admin.http.get("/metrics").text
    for name in ("muxgate_admission_denials_total", "muxgate_settlements_total", "muxgate_ledger_buffered_total",
                 "muxgate_ledger_dropped_total", "muxgate_ledger_pending", "muxgate_cost_usd_total"):
        assert name in text
