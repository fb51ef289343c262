"""Report endpoints: GET /v1/reports/usage (JSON or CSV) and the HTML page GET /reports.

Team keys see their own team only; the admin key sees all teams (and may narrow with ?team=).

The HTML page is opened in a browser, which cannot send an Authorization header by itself.
Without one it shows a sign-in form that POSTs the key (so it never lands in a URL, an access
log or the history); the key is checked through the same failed-auth limiter as the API, and the
browser gets a signed session cookie (`gateway/tenancy/report_session.py`: the caller's key id and an
expiry, never the secret; HttpOnly, SameSite=Strict, scoped to /reports, `Secure` unless
`server.report_cookie_secure` is false) and a redirect to the page. A link with ``?key=`` (for
scripts) is accepted the same way and redirected to the URL without it; prefer the form.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.tenancy.callers import team_scope
from gateway.http.errors import BadRequest, NotFound, Unauthorized
from gateway.tenancy.report_page import CONTENT_SECURITY_POLICY, page_data, pick_bucket, render_page
from gateway.tenancy.reports import build_report, parse_group_by, parse_range, report_csv

COOKIE = "muxgate_report_session"
MAX_SIGN_IN_BYTES = 8192
COOKIE_PATH = "/reports"


def _store(gw):
    if gw.tenancy is None:
        raise NotFound("Tenancy is disabled on this gateway (store.url is null).")
    return gw.tenancy.store


def _wants_csv(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise BadRequest("Invalid value for 'format': use json or csv.", param="format", code="invalid_request")
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


async def usage_report(gw, request: Request) -> Response:
    store = _store(gw)
    caller = await gw.callers.caller(request.headers.get("authorization"))
    q = request.query_params
    team_id = team_scope(caller, q.get("team"))
    start, end = parse_range(q.get("from"), q.get("to"))
    await gw.tenancy.caught_up()  # what this gateway answered is in its report
    report = await build_report(store, start, end, parse_group_by(q.get("group_by")), team_id)
    if _wants_csv(request):
        return Response(report_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="muxgate-usage.csv"'})
    return JSONResponse(report)


_SIGN_IN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>muxgate usage: sign in</title>
<style>body{font:14px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}
input{width:100%;padding:.4rem;margin:.4rem 0}</style></head><body>
<h1>muxgate usage</h1><p>{message}</p>
<form method="post" action="/reports"><label>API key (a team's key, or the admin key)
<input type="password" name="key" autocomplete="off" required></label>{hidden}
<button type="submit">Show report</button></form></body></html>"""


def _sign_in(request: Request, message: str, params=None) -> HTMLResponse:
    """The sign-in form, carrying the page's filters (?from=, ?team=, …) through as hidden fields."""
    params = request.query_params.multi_items() if params is None else params
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in params if k != "key")
    body = _SIGN_IN.replace("{message}", html.escape(message)).replace("{hidden}", hidden)
    return HTMLResponse(body, status_code=401, headers={"content-security-policy": CONTENT_SECURITY_POLICY})


async def _sign_in_with(gw, request: Request, key: str, params: list[tuple[str, str]]) -> Response:
    """Check a key sent by the form (or a ?key= link) and answer with a session cookie and a
    redirect to the page; a wrong key counts against the failed-auth limit like the API's."""
    subjects = gw.auth_limiter.request_subjects(request, token=key)
    gw.auth_limiter.check(subjects)
    try:
        caller = await gw.callers.caller(f"Bearer {key}")
    except Unauthorized:
        gw.auth_limiter.record_failure(subjects)
        return _sign_in(request, "That key was not accepted.", params)
    rest = urlencode([(k, v) for k, v in params if k != "key"])
    response = RedirectResponse(COOKIE_PATH + (f"?{rest}" if rest else ""), status_code=303)
    response.set_cookie(COOKIE, gw.tenancy.report_sessions.issue(caller), path=COOKIE_PATH,
                        max_age=int(gw.tenancy.report_sessions.ttl_s), httponly=True, samesite="strict",
                        secure=gw.config.server.report_cookie_secure)
    return response


async def sign_in(gw, request: Request) -> Response:
    """POST /reports: the sign-in form (application/x-www-form-urlencoded: key + the page's filters)."""
    _store(gw)
    body = await request.body()
    if len(body) > MAX_SIGN_IN_BYTES:
        raise BadRequest("The sign-in form is too large.", code="invalid_request")
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The sign-in form is not valid form data.", code="invalid_request") from None
    key = dict(params).get("key", "").strip()
    if not key:
        return _sign_in(request, "Enter a key to see its usage report.", params)
    return await _sign_in_with(gw, request, key, params)


async def report_page(gw, request: Request) -> Response:
    store = _store(gw)
    q = request.query_params
    if "key" in q:
        return await _sign_in_with(gw, request, q["key"], q.multi_items())
    authorization = request.headers.get("authorization")
    if authorization is not None:
        caller = await gw.callers.caller(authorization)  # the app's endpoint limits failures
    elif COOKIE in request.cookies:
        caller = await gw.tenancy.report_sessions.caller(request.cookies[COOKIE], store)
        if caller is None:
            response = _sign_in(request, "Your session has ended (expired, or its key was revoked): sign in again.")
            response.delete_cookie(COOKIE, path=COOKIE_PATH)
            return response
    else:
        return _sign_in(request, "Enter a key to see its usage report.")
    team_id = team_scope(caller, q.get("team"))
    start, end = parse_range(q.get("from"), q.get("to"))
    bucket = q.get("bucket")
    if bucket not in (None, "day", "hour"):
        raise BadRequest("Invalid value for 'bucket': use day or hour.", param="bucket", code="invalid_request")
    await gw.tenancy.caught_up()
    data = await page_data(store, start, end, team_id, pick_bucket(start, end, bucket))
    page = render_page(data, gw.tenancy.costs.baseline_model)
    return HTMLResponse(page, headers={"content-security-policy": CONTENT_SECURITY_POLICY,
                                       "cache-control": "no-store"})


def routes(endpoint) -> list[Route]:
    """The report routes, each wrapped by the app's error-mapping ``endpoint``."""
    return [
        Route("/v1/reports/usage", endpoint(usage_report), methods=["GET"]),
        Route("/reports", endpoint(report_page), methods=["GET"]),
        Route("/reports", endpoint(sign_in), methods=["POST"]),
    ]
