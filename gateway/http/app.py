"""The Starlette application: routes and middleware, wired once at start-up."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.tenancy import admin

from gateway.tenancy import report_routes
from gateway.tenancy.auth import ConfigKeyAuthenticator
from gateway.upstreams.backends import Backend
from gateway.tenancy.callers import AdminKey, ConfigCallers
from gateway.http.completions import CompletionService
from gateway.config import MuxgateConfig
from gateway.tenancy.auth_limiter import FailedAuthLimiter
from gateway.http.errors import GatewayError, MethodNotAllowed, NotFound, Unauthorized, error_response
from gateway.http.metrics import GatewayMetrics
from gateway.http.openapi import openapi_document
from gateway.pool_metrics import PoolMetricsCollector, poll_pool_stats
from gateway.store import Store
from gateway.tenancy.wiring import Tenancy, resolve_admin_key
from policies.router import AUTO, Router
from workers.types import ModelInfo

log = logging.getLogger("muxgate.gateway")


class RequestIdMiddleware:
    """Gives every request an id and a start time (``scope["state"]``). Every route, the
    inference ones too, then goes through Starlette's router, so a middleware added inside this
    one sees every request. The id header is put on each response by the handler wrapper
    (`_endpoint`, `_http_exception`) rather than by wrapping ``send`` here: a wrapper runs on
    every message of every stream."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            state["request_id"] = secrets.token_hex(12)
            state["started"] = time.perf_counter()
        await self.app(scope, receive, send)


def _with_id(response: Response, request_id: str) -> Response:
    response.raw_headers.append((b"x-request-id", request_id.encode()))
    return response


class _AsgiEndpoint:
    """An `_endpoint` as a plain ASGI app: its Route then calls it directly, without Starlette's
    per-route request wrapper and its second exception handler (the endpoint answers every
    exception itself), which the two inference routes, the gateway's hot path, need not pay."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    async def __call__(self, scope, receive, send):
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


class Gateway:
    """Everything a handler needs, built once."""

    def __init__(self, config: MuxgateConfig, backend: Backend, authenticator=None, store: Store | None = None):
        self.config = config
        self.backend = backend
        self.metrics = GatewayMetrics()
        self.model_infos: dict[str, ModelInfo] = {}
        self._models_listed_at = float("-inf")
        # With a store: keys, budgets and the ledger live there. Without (store.url: null): the
        # config's keys only, every request admitted, nothing recorded.
        self.tenancy = (Tenancy(config, self.metrics.registry, self.context_length, store)
                        if store is not None or config.store.url else None)
        if self.tenancy is not None:
            self.callers = self.tenancy.authenticator
        else:
            self.callers = ConfigCallers(ConfigKeyAuthenticator.from_config(config.keys, config.teams).authenticate,
                                         AdminKey(resolve_admin_key(config.admin)))
        self.authenticator = authenticator or self.callers
        self.pool_metrics = PoolMetricsCollector()
        self.router = self._make_router(config)
        self.learning = None  # routing that learns from outcomes: needs a store and a routing policy
        if self.tenancy is not None and config.routing.policy_file:
            from gateway.learning.wiring import Learning, LearningCollector

            self.learning = Learning(config, backend, self.tenancy, self.router)
            self.metrics.registry.register(LearningCollector(self.learning))
        self.completions = CompletionService(backend, self.router, self.authenticator.authenticate,
                                             self.metrics, config.server,
                                             admission=self.tenancy.admission if self.tenancy else None,
                                             recorder=self.learning.recorder if self.learning else None)
        self.created = int(time.time())
        self.auth_limiter = FailedAuthLimiter(config.server.auth_failures_per_minute,
                                              trusted_proxies=config.server.trusted_proxies)
        self.metrics.registry.register(self.pool_metrics)

    def _make_router(self, config: MuxgateConfig):
        names = [m.name for m in config.models]
        if not config.routing.policy_file:
            return Router(config.routing, names)
        from gateway.route_signals import GatewaySignals
        from policies.policy_router import ReloadingRouter

        store = self.tenancy.store if self.tenancy is not None else None
        return ReloadingRouter(config.routing.policy_file, set(names), GatewaySignals(store, self.pool_metrics))

    async def refresh_models(self) -> None:
        self.model_infos = {m.name: m for m in await self.backend.models()}

    async def context_length(self, model: str) -> int | None:
        """The model's context (for admission's worst case); None when the pool does not know it."""
        # A model the pool does not list (an upstream one) must not cost a pool call per request.
        if model not in self.model_infos and time.monotonic() - self._models_listed_at > 30:
            self._models_listed_at = time.monotonic()
            try:
                await self.refresh_models()
            except Exception:
                log.exception("could not list the pool's models")
        info = self.model_infos.get(model)
        return info.context_length if info else None


def _endpoint(handler):
    """Run a handler; any exception becomes OpenAI's error body with the right status."""

    async def endpoint(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        request_id = request.state.request_id
        subjects = ()
        try:
            if "authorization" in request.headers or request.url.path.startswith("/v1/"):
                subjects = gw.auth_limiter.request_subjects(request)
                gw.auth_limiter.check(subjects)
            return _with_id(await handler(gw, request), request_id)
        except Exception as exc:
            if isinstance(exc, Unauthorized):
                gw.auth_limiter.record_failure(subjects)
            response = error_response(exc, request_id)
            code = exc.code if isinstance(exc, GatewayError) else getattr(exc, "code", "internal_error")
            gw.metrics.errors.labels(str(response.status_code), str(code)).inc()
            return _with_id(response, request_id)

    endpoint.__name__ = handler.__name__
    return endpoint


async def chat_completions(gw: Gateway, request: Request) -> Response:
    return await gw.completions.handle(request, chat=True)


async def completions(gw: Gateway, request: Request) -> Response:
    return await gw.completions.handle(request, chat=False)


async def feedback(gw: Gateway, request: Request) -> Response:
    if gw.learning is None:
        raise NotFound("Feedback needs a store and a routing policy (routing.policy_file); this gateway has none.")
    return await gw.learning.feedback.handle(request)


async def list_models(gw: Gateway, request: Request) -> Response:
    principal = await gw.authenticator.authenticate(request.headers.get("authorization"))
    if not gw.model_infos:
        await gw.refresh_models()
    data = [{"id": AUTO, "object": "model", "created": gw.created, "owned_by": "muxgate"}]
    for m in gw.config.models:
        if not principal.allows_model(m.name):  # a key sees only the models it may use
            continue
        info = gw.model_infos.get(m.name)
        entry = {"id": m.name, "object": "model", "created": gw.created, "owned_by": "muxgate"}
        if info is not None:
            entry.update(context_length=info.context_length, parameters=info.parameters)
        data.append(entry)
    return JSONResponse({"object": "list", "data": data})


async def healthz(gw: Gateway, request: Request) -> Response:
    """Liveness: the process serves HTTP. Says nothing of the store or the pool (see readyz)."""
    return JSONResponse({"status": "ok", "models": len(gw.config.models)})


READY_CHECK_TIMEOUT_S = 2.0  # a probe's own timeout is ~3 s; answer before it gives up


async def readyz(gw: Gateway, request: Request) -> Response:
    """Readiness: the store answers and the pool lists its models, each within 2 s. 503 names
    what failed, so a load balancer sends no traffic to a gateway that would only answer 503."""
    checks = {"pool": gw.backend.models()}
    if gw.tenancy is not None:
        checks["store"] = gw.tenancy.store.ping()

    async def outcome(check) -> str:
        try:
            await asyncio.wait_for(check, READY_CHECK_TIMEOUT_S)
            return "ok"
        except asyncio.TimeoutError:
            return f"no answer within {READY_CHECK_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            return f"{type(exc).__name__}: {exc}"[:200]

    results = dict(zip(checks, await asyncio.gather(*map(outcome, checks.values()))))  # side by side
    ready = all(v == "ok" for v in results.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": results},
                        status_code=200 if ready else 503)


async def openapi(gw: Gateway, request: Request) -> Response:
    return JSONResponse(openapi_document())


async def metrics(gw: Gateway, request: Request) -> Response:
    """Prometheus metrics. They carry every team's spend and budget position, so they need the
    admin key unless `server.public_metrics` says the port is not reachable by tenants."""
    if not gw.config.server.public_metrics:
        await gw.callers.require_admin(request.headers.get("authorization"))
    return Response(gw.metrics.render(), media_type=gw.metrics.content_type)


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    rid = request.scope.get("state", {}).get("request_id", "-")
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
    elif exc.status_code == 404:
        error = NotFound(f"Unknown path {request.url.path}.")
    else:
        error = GatewayError(str(exc.detail))
    return _with_id(error_response(error, rid), rid)


def create_app(config: MuxgateConfig, backend: Backend, authenticator=None, store: Store | None = None) -> Starlette:
    """The gateway app; ``store`` overrides the one `store.url` names (tests)."""
    gateway = Gateway(config, backend, authenticator, store)

    @asynccontextmanager
    async def lifespan(app):
        if gateway.tenancy is not None:
            await gateway.tenancy.start()  # no store, no gateway: keys and budgets live there
        try:
            await gateway.refresh_models()
        except Exception:
            log.exception("could not list the pool's models at start-up; will retry on /v1/models")
        background = [asyncio.create_task(poll_pool_stats(backend, gateway.pool_metrics))]
        if gateway.tenancy is not None:
            background.append(asyncio.create_task(gateway.tenancy.watch_budgets()))
            background.append(asyncio.create_task(gateway.tenancy.admission.watch_reservations()))
            if gateway.tenancy.journal is not None:
                background.append(asyncio.create_task(gateway.tenancy.watch_journal()))
        if hasattr(gateway.router, "watch"):  # hot reload of the routing policy file
            background.append(asyncio.create_task(gateway.router.watch()))
        if gateway.learning is not None:
            await gateway.learning.start()
            background.append(asyncio.create_task(gateway.learning.state.watch()))
        yield
        for task in background:
            task.cancel()
        await gateway.completions.drain()
        if gateway.learning is not None:
            await gateway.learning.close()
        if gateway.tenancy is not None:
            await gateway.tenancy.close()
        await backend.close()

    routes = [
        Route("/v1/chat/completions", _AsgiEndpoint(_endpoint(chat_completions)), methods=["POST"]),
        Route("/v1/completions", _AsgiEndpoint(_endpoint(completions)), methods=["POST"]),
        Route("/v1/models", _endpoint(list_models), methods=["GET"]),
        Route("/v1/feedback", _endpoint(feedback), methods=["POST"]),
        Route("/healthz", _endpoint(healthz), methods=["GET"]),
        Route("/readyz", _endpoint(readyz), methods=["GET"]),
        Route("/metrics", _endpoint(metrics), methods=["GET"]),
        Route("/openapi.json", _endpoint(openapi), methods=["GET"]),
        *admin.routes(_endpoint),
        *report_routes.routes(_endpoint),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_exception})
    app.state.gateway = gateway
    app.add_middleware(RequestIdMiddleware)
    return app
