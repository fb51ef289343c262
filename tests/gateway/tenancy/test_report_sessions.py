"""The report page's sign-in: a session that ends with its key, and guesses that count."""

import httpx

from support import make_config
from tenancy_testkit import ADMIN_KEY, Admin, session_header, tenancy_config

from gateway.tenancy.report_session import ReportSessions
from gateway.tenancy.callers import ADMIN


def test_a_revoked_keys_session_ends_at_once(tenant_gateway):
    admin = Admin(tenant_gateway.base_url)
    try:
        admin.team("reports-rev")
        created = admin.key("reports-rev", name="browser")
        signed_in = httpx.post(tenant_gateway.base_url + "/reports", data={"key": created["secret"]})
        assert signed_in.status_code == 303
        assert httpx.get(tenant_gateway.base_url + "/reports", headers=session_header(signed_in)).status_code == 200
        admin.call("POST", f"/v1/admin/keys/{created['id']}/revoke")
        after = httpx.get(tenant_gateway.base_url + "/reports", headers=session_header(signed_in))
        assert after.status_code == 401 and "sign in again" in after.text
    finally:
        admin.close()


def test_wrong_keys_at_the_sign_in_form_count_against_the_failed_auth_limit(zoo_dir, start_server, tmp_path):
    config = tenancy_config(zoo_dir, f"sqlite:///{tmp_path / 'muxgate.db'}")
    config["server"] = {**make_config(zoo_dir)["server"], "auth_failures_per_minute": 3}
    server = start_server(config)
    wrong = {"key": "mg-wrong-0123456789abcdef"}
    for _ in range(3):
        assert httpx.post(server.base_url + "/reports", data=wrong).status_code == 401
    blocked = httpx.post(server.base_url + "/reports", data=wrong)
    assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "too_many_auth_failures"
    assert httpx.post(server.base_url + "/reports", data={"key": ADMIN_KEY}).status_code == 303  # others still sign in


def test_the_cookie_flag_follows_the_config_not_the_request_scheme(zoo_dir, start_server, tmp_path):
    config = tenancy_config(zoo_dir, f"sqlite:///{tmp_path / 'muxgate.db'}")
    config["server"] = {**make_config(zoo_dir)["server"], "report_cookie_secure": False}
    server = start_server(config)
    signed_in = httpx.post(server.base_url + "/reports", data={"key": ADMIN_KEY})
    assert signed_in.status_code == 303 and "Secure" not in signed_in.headers["set-cookie"]


def test_sessions_expire_and_carry_only_the_key_id():
    now = [1_000_000.0]
    sessions = ReportSessions(b"k" * 32, ttl_s=60, clock=lambda: now[0])
    cookie = sessions.issue(ADMIN)
    assert sessions.subject(cookie) == "admin"
    now[0] += 61
    assert sessions.subject(cookie) is None
    other = ReportSessions(b"x" * 32, ttl_s=60, clock=lambda: now[0])
    assert other.subject(sessions.issue(ADMIN)) is None  # another secret: not ours
