"""What Starlette's own stack costs per request, in-process, against dispatching to the endpoint
directly: the floor under the gateway's routing since its inference routes are router routes again
(issue 19 item 13; docs/BENCHMARKS.md).

    python -m loadtests.asgi_stack_bench --json [--calls N] [--rounds R]

The same trivial ASGI endpoint (a small JSON body) behind, in turns within each round:
``direct`` (a pass-through middleware calling it), ``router`` (that middleware over a bare
``starlette.routing.Router``), ``exceptions_router`` (plus ``ExceptionMiddleware``) and
``starlette`` (a ``Starlette`` app with the middleware added, what the gateway builds: server-error
and exception middleware, the router). The router holds as many routes as the gateway, the hot one
first, as in gateway/http/app.py. Prints one JSON line: microseconds per call (median over rounds) and
each stack's extra over ``direct``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from starlette.applications import Starlette
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

GATEWAY_ROUTES = 30  # about what gateway/http/app.py registers (inference, models, admin, reports, probes)


class PassThrough:
    """A middleware doing what RequestIdMiddleware does: one write into the scope's state."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        scope.setdefault("state", {})["request_id"] = "x"
        await self.app(scope, receive, send)


class Endpoint:
    """A plain ASGI app, as gateway/http/app.py's `_AsgiEndpoint` (a function would get Starlette's
    per-route request wrapper, which the gateway's inference routes skip)."""

    async def __call__(self, scope, receive, send):
        await JSONResponse({"ok": True})(scope, receive, send)


endpoint = Endpoint()


def stacks() -> dict:
    routes = [Route("/v1/chat/completions", endpoint, methods=["POST"]),
              *(Route(f"/other/{i}", endpoint, methods=["GET"]) for i in range(GATEWAY_ROUTES - 1))]
    app = Starlette(routes=routes)
    app.add_middleware(PassThrough)
    return {"direct": PassThrough(endpoint), "router": PassThrough(Router(routes=routes)),
            "exceptions_router": PassThrough(ExceptionMiddleware(Router(routes=routes))), "starlette": app}


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message):
    pass


def _scope() -> dict:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b"",
            "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000), "http_version": "1.1"}


async def _per_call_us(app, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await app(_scope(), _receive, _send)
    return (time.perf_counter() - started) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict:
    apps = stacks()
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():  # every stack once per round: drift hits them alike
            times[name].append(await _per_call_us(app, calls))
    us = {name: round(statistics.median(values), 2) for name, values in times.items()}
    return {"calls": calls, "rounds": rounds, "us_per_call": us,
            "extra_over_direct_us": {name: round(value - us["direct"], 2) for name, value in us.items() if name != "direct"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON line (the default output)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.calls, args.rounds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
