"""Report endpoints: GET /v1/reports/usage (JSON or CSV) and the HTML page GET /reports.

Team keys see their own team only; the admin key sees all teams (and may narrow with ?team=).

The HTML page is opened in a browser, which cannot send an Authorization header by itself, so it
accepts the key three ways: the Authorization header; ``?key=`` once, which is checked, stored in
an HttpOnly, SameSite=Strict cookie scoped to /reports and answered with a redirect to the same
URL without the key (so it does not stay in the address bar or history); or that cookie. Without
a key it shows a small form that asks for one.
"""

from __future__ import annotations

import html
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.callers import team_scope
from gateway.errors import BadRequest, NotFound, Unauthorized
from gateway.report_page import CONTENT_SECURITY_POLICY, page_data, pick_bucket, render_page
from gateway.reports import build_report, parse_group_by, parse_range, report_csv

COOKIE = "muxgate_key"
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
<form method="get" action="/reports"><label>API key (a team's key, or the admin key)
<input type="password" name="key" autocomplete="off" required></label>{hidden}
<button type="submit">Show report</button></form></body></html>"""


def _sign_in(request: Request, message: str) -> HTMLResponse:
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in request.query_params.items() if k != "key")
    body = _SIGN_IN.replace("{message}", html.escape(message)).replace("{hidden}", hidden)
    return HTMLResponse(body, status_code=401, headers={"content-security-policy": CONTENT_SECURITY_POLICY})


async def report_page(gw, request: Request) -> Response:
    store = _store(gw)
    q = request.query_params
    if "key" in q:
        # Check the key, keep it in a cookie, and drop it from the URL.
        try:
            await gw.callers.caller(f"Bearer {q['key']}")
        except Unauthorized:
            return _sign_in(request, "That key was not accepted.")
        rest = urlencode([(k, v) for k, v in q.multi_items() if k != "key"])
        response = RedirectResponse(COOKIE_PATH + (f"?{rest}" if rest else ""), status_code=303)
        response.set_cookie(COOKIE, q["key"], path=COOKIE_PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response
    authorization = request.headers.get("authorization")
    if authorization is None and COOKIE in request.cookies:
        authorization = f"Bearer {request.cookies[COOKIE]}"
    if authorization is None:
        return _sign_in(request, "Enter a key to see its usage report.")
    try:
        caller = await gw.callers.caller(authorization)
    except Unauthorized:
        response = _sign_in(request, "That key was not accepted (revoked or expired?).")
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response
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
    ]
