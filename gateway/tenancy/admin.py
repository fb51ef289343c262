"""The admin API (admin key only) and the team-scoped reads (a team's key sees its own team).

    /v1/admin/teams                     GET list · POST create
    /v1/admin/teams/{team}              GET (with spend) · PATCH/POST update · DELETE
    /v1/admin/keys                      GET list (?team=) · POST create (secret shown once)
    /v1/admin/keys/{key}                GET
    /v1/admin/keys/{key}/revoke         POST
    /v1/admin/keys/{key}/rotate         POST {"grace_s": 3600}
    /v1/pool                            GET the pool replicas' stats (admin)
    /v1/keys                            GET keys without secrets (team: its own; admin: ?team=)
    /v1/spend                           GET budget position (team: its own; admin: ?team=)
    /v1/usage                           GET raw ledger records (?from=&to=&limit=&team=)

Every handler goes through the same operations as the CLI (gateway/tenancy/ops.py).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.tenancy.callers import team_scope
from gateway.http.completions import read_body
from gateway.http.errors import BadRequest, NotFound
from gateway.http.openai_api import parse_json
from gateway.tenancy.reports import parse_range
from gateway.tenancy.errors import mapped_store_errors
from gateway.tenancy.ops import TenancyOps, key_json

MAX_ADMIN_BODY = 64 * 1024
MAX_RECORDS = 10_000


def _ops(gw) -> TenancyOps:
    if gw.tenancy is None:
        raise NotFound("Tenancy is disabled on this gateway (store.url is null).")
    return gw.tenancy.ops


async def _body(request: Request) -> dict:
    raw = await read_body(request, MAX_ADMIN_BODY)
    return parse_json(raw) if raw.strip() else {}


async def _admin(gw, request: Request) -> TenancyOps:
    ops = _ops(gw)
    await gw.callers.require_admin(request.headers.get("authorization"))
    await gw.tenancy.caught_up()  # what this gateway answered is in what it reports
    return ops


async def teams(gw, request: Request) -> Response:
    ops = await _admin(gw, request)
    if request.method == "POST":
        return JSONResponse(await ops.create_team(await _body(request)))
    return JSONResponse(await ops.list_teams())


async def team(gw, request: Request) -> Response:
    ops = await _admin(gw, request)
    team_id = request.path_params["team_id"]
    if request.method == "GET":
        return JSONResponse(await ops.get_team(team_id))
    if request.method == "DELETE":
        return JSONResponse(await ops.delete_team(team_id))
    return JSONResponse(await ops.update_team(team_id, await _body(request)))


async def keys_admin(gw, request: Request) -> Response:
    ops = await _admin(gw, request)
    if request.method == "POST":
        return JSONResponse(await ops.create_key(await _body(request)))
    return JSONResponse(await ops.list_keys(request.query_params.get("team") or None))


async def key(gw, request: Request) -> Response:
    ops = await _admin(gw, request)
    return JSONResponse(key_json(await ops.get_key(request.path_params["key_id"])))


async def revoke(gw, request: Request) -> Response:
    ops = await _admin(gw, request)
    return JSONResponse(await ops.revoke_key(request.path_params["key_id"]))


async def rotate(gw, request: Request) -> Response:
    ops = await _admin(gw, request)
    return JSONResponse(await ops.rotate_key(request.path_params["key_id"], await _body(request)))


async def pool(gw, request: Request) -> Response:
    await gw.callers.require_admin(request.headers.get("authorization"))
    stats = await gw.backend.stats()
    # replica stats are plain data, but may hold tuples or numpy scalars: make them JSON
    return Response(json.dumps(stats, default=str), media_type="application/json")


async def _scoped(gw, request: Request) -> tuple[TenancyOps, str | None]:
    ops = _ops(gw)
    caller = await gw.callers.caller(request.headers.get("authorization"))
    await gw.tenancy.caught_up()
    return ops, team_scope(caller, request.query_params.get("team"))


async def keys_read(gw, request: Request) -> Response:
    ops, team_id = await _scoped(gw, request)
    return JSONResponse(await ops.list_keys(team_id))


async def spend(gw, request: Request) -> Response:
    ops, team_id = await _scoped(gw, request)
    if team_id is None:
        raise BadRequest("Name the team: ?team=<id>.", param="team", code="invalid_request")
    return JSONResponse(await ops.spend(team_id))


async def usage(gw, request: Request) -> Response:
    """Raw ledger records (for audits and reconciliation; reports read the rollups instead)."""
    ops, team_id = await _scoped(gw, request)
    q = request.query_params
    start, end = parse_range(q.get("from"), q.get("to"))
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise BadRequest("Invalid value for 'limit'.", param="limit", code="invalid_request") from None
    if not 1 <= limit <= MAX_RECORDS:
        raise BadRequest(f"'limit' must be between 1 and {MAX_RECORDS}.", param="limit", code="invalid_request")
    with mapped_store_errors():
        records = await ops.store.usage_records(start, end, team_id=team_id, limit=limit)
    data = [{"object": "usage_record", **r.to_json_dict()} for r in records]
    for row in data:  # money as numbers, like every other endpoint
        row["cost_usd"], row["baseline_cost_usd"] = float(row["cost_usd"]), float(row["baseline_cost_usd"])
    return JSONResponse({"object": "list", "data": data, "has_more": len(records) == limit})


def routes(endpoint) -> list[Route]:
    """The admin and team-scoped routes, each wrapped by the app's error-mapping ``endpoint``."""
    return [
        Route("/v1/admin/teams", endpoint(teams), methods=["GET", "POST"]),
        Route("/v1/admin/teams/{team_id}", endpoint(team), methods=["GET", "PATCH", "POST", "DELETE"]),
        Route("/v1/admin/keys", endpoint(keys_admin), methods=["GET", "POST"]),
        Route("/v1/admin/keys/{key_id}", endpoint(key), methods=["GET"]),
        Route("/v1/admin/keys/{key_id}/revoke", endpoint(revoke), methods=["POST"]),
        Route("/v1/admin/keys/{key_id}/rotate", endpoint(rotate), methods=["POST"]),
        Route("/v1/pool", endpoint(pool), methods=["GET"]),
        Route("/v1/keys", endpoint(keys_read), methods=["GET"]),
        Route("/v1/spend", endpoint(spend), methods=["GET"]),
        Route("/v1/usage", endpoint(usage), methods=["GET"]),
    ]
