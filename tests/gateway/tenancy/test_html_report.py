"""The HTML report renders in a real headless Chromium, and what its charts draw is exactly the
JSON report."""

from __future__ import annotations

import re
import subprocess
import time
from html.parser import HTMLParser

import httpx
import openai
import pytest

from support import KEY_ALPHA, KEY_BETA
from tenancy_testkit import ADMIN_KEY, chromium_binary, session_header

CHROMIUM = chromium_binary()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-chromium.sh installs it)")


class Bars(HTMLParser):
    """Collects the charts' bars (their data-* attributes) and the body's render status."""

    def __init__(self):
        super().__init__()
        self.bars: dict[str, dict[tuple[str, str], float]] = {}
        self.rendered = None
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.rendered = a.get("data-rendered")
        if tag == "svg":
            self.svgs += 1
        if tag == "rect" and "data-chart" in a:
            self.bars.setdefault(a["data-chart"], {})[(a["data-x"], a["data-series"])] = float(a["data-value"])


def render(url: str, tmp_path) -> Bars:
    """The page's DOM after its scripts ran, as headless Chromium sees it."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    parser = Bars()
    parser.feed(out.stdout)
    return parser


def _spend(gateway):
    for key, models in ((KEY_ALPHA, ("mux-2m", "mux-5m", "auto")), (KEY_BETA, ("mux-2m",))):
        client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0, timeout=60)
        for model in models:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0)
    time.sleep(0.5)  # settlement runs just after each response


def _expected(gateway, key: str, group_by: str, window: dict, column: str, metric: str):
    report = httpx.get(gateway.base_url + "/v1/reports/usage", headers={"authorization": f"Bearer {key}"},
                       params={**window, "group_by": group_by}).json()
    bucket = group_by.split(",")[0]
    return {(row[bucket], row[column]): row[metric] for row in report["data"]}


def test_report_page_charts_match_the_json_report(tenant_gateway, tmp_path):
    _spend(tenant_gateway)
    window = {"from": "2000-01-01", "to": str(time.time() + 3600)}
    page = render(f"{tenant_gateway.base_url}/reports?key={ADMIN_KEY}&from={window['from']}&to={window['to']}"
                  "&bucket=day", tmp_path)
    assert page.rendered == "ok" and page.svgs == 3
    by_model = _expected(tenant_gateway, ADMIN_KEY, "day,model", window, "model", "cost_usd")
    assert by_model and page.bars["spend-by-model"] == by_model
    assert page.bars["savings-by-model"] == _expected(tenant_gateway, ADMIN_KEY, "day,model", window, "model",
                                                      "savings_usd")
    by_team = _expected(tenant_gateway, ADMIN_KEY, "day,team", window, "team", "cost_usd")
    assert {"alpha", "beta"} <= {team for _, team in by_team}
    assert page.bars["spend-by-team"] == by_team


def test_a_team_key_sees_only_its_team_on_the_page(tenant_gateway, tmp_path):
    _spend(tenant_gateway)
    window = {"from": str(time.time() - 3 * 3600), "to": str(time.time() + 60)}
    page = render(f"{tenant_gateway.base_url}/reports?key={KEY_ALPHA}&from={window['from']}&to={window['to']}",
                  tmp_path)
    assert page.rendered == "ok"
    # a short range is drawn per hour
    expected = _expected(tenant_gateway, KEY_ALPHA, "hour,team", window, "team", "cost_usd")
    assert page.bars["spend-by-team"] == expected and {team for _, team in expected} == {"alpha"}
    assert page.bars["spend-by-model"] == _expected(tenant_gateway, KEY_ALPHA, "hour,model", window, "model",
                                                    "cost_usd")


def test_report_page_sign_in_posts_the_key_and_keeps_a_session_that_is_not_the_key(tenant_gateway):
    base = tenant_gateway.base_url
    ask = httpx.get(base + "/reports", params={"bucket": "day"})
    assert ask.status_code == 401 and '<form method="post" action="/reports">' in ask.text
    assert '<input type="hidden" name="bucket" value="day">' in ask.text  # the filters survive sign-in
    wrong = httpx.post(base + "/reports", data={"key": "mg-wrong-0123456789abcdef"})
    assert wrong.status_code == 401 and "not accepted" in wrong.text
    first = httpx.post(base + "/reports", data={"key": KEY_ALPHA, "bucket": "day"})
    assert first.status_code == 303 and first.headers["location"] == "/reports?bucket=day"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" in cookie and "Path=/reports" in cookie
    assert KEY_ALPHA not in cookie and KEY_ALPHA.split("-")[-1] not in cookie  # a session, not the key
    page = httpx.get(base + "/reports?bucket=day", headers=session_header(first))
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    # nothing fetched from anywhere: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text) and "<link" not in page.text
    assert "@import" not in page.text and "url(" not in page.text
    assert KEY_ALPHA not in page.text
    # a link with ?key= (scripts) signs in the same way, and the key leaves the address
    link = httpx.get(base + "/reports", params={"key": KEY_ALPHA, "bucket": "day"})
    assert link.status_code == 303 and link.headers["location"] == "/reports?bucket=day"
    assert KEY_ALPHA not in link.headers["set-cookie"]


def test_a_forged_or_tampered_session_cookie_is_refused(tenant_gateway):
    base = tenant_gateway.base_url
    first = httpx.post(base + "/reports", data={"key": KEY_ALPHA})
    name, value = session_header(first)["cookie"].split("=", 1)
    payload, _, signature = value.rpartition(".")
    forged_admin = payload.replace(payload.split(".")[1], "admin") + "." + signature
    for bad in (forged_admin, payload + ".AAAA", "v1.admin.99999999999.x", KEY_ALPHA):
        page = httpx.get(base + "/reports", headers={"cookie": f"{name}={bad}"})
        assert page.status_code == 401 and "sign in again" in page.text, bad
