"""The request path of /v1/chat/completions and /v1/completions: auth, parse, route, dispatch,
stream, and the bookkeeping that runs when a request ends (completed, failed or abandoned)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Awaitable, Callable, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.tenancy.auth import Principal
from gateway.upstreams.backends import Backend
from gateway.config import ServerConfig
from gateway.http.errors import (
    BackendFailed,
    BackendUnavailable,
    GatewayError,
    ModelNotAvailable,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamRateLimited,
    describe,
)
from gateway.http.metrics import GatewayMetrics
from gateway.http.openai_api import ChatCompletionRequest, CompletionRequest, parse_body, to_generation
from gateway.http.openai_responses import ResponseBuilder, sse
from policies.decision import RouteContext, RoutingDecision
from policies.router import Router
from workers.types import GenerationChunk, PoolError

log = logging.getLogger("muxgate.requests")


@dataclass
class RequestTrace:
    """What one request did; handed to completion hooks (metrics now, the usage ledger later)."""

    request_id: str
    endpoint: str
    principal: Principal
    requested_model: str
    decision: RoutingDecision
    started: float
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0
    status: str = "ok"  # ok | error | client_disconnect
    error_code: str | None = None
    replica: str | None = None
    ticket: object = None  # what admission reserved; settled when the request ends
    backend_seconds: float = 0.0  # time spent waiting on the backend (the rest is the gateway's overhead)
    tool_calls: int = 0  # calls the model made, over all choices
    constrained: str | None = None  # the grammar that constrained the answer ("json_schema", "tool_call" ...)
    routed: object = None  # what routing learns from this request (gateway/learning/routed_record.RoutedNote); None: nothing
    answer: str | None = None  # the first choice's text, kept only when `routed` asks for it
    extra: dict = field(default_factory=dict)
    # per choice: (completion tokens, gpu seconds) so far; both are cumulative per choice
    _choices: dict = field(default_factory=dict, repr=False)

    def observe(self, chunk: GenerationChunk) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
        if chunk.index == 0 and len(self._choices) <= 1:  # one choice: no sums to keep
            self.completion_tokens, self.gpu_seconds = chunk.completion_tokens, chunk.gpu_seconds
            self._choices[0] = (chunk.completion_tokens, chunk.gpu_seconds)
        else:
            self._choices[chunk.index] = (chunk.completion_tokens, chunk.gpu_seconds)
            self.completion_tokens = sum(c for c, _ in self._choices.values())
            self.gpu_seconds = sum(g for _, g in self._choices.values())
        if chunk.tool_calls:
            self.tool_calls += sum(1 for call in chunk.tool_calls if call.get("id"))  # a call's first delta
        self.constrained = chunk.constrained or self.constrained
        self.replica = chunk.replica or self.replica


class SettlingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always runs `on_close` when it is done, even when Starlette
    never started its body iterator (a client that disconnected before the first byte)."""

    def __init__(self, content, on_close: Callable[[], Awaitable[None]], **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


class Admission(Protocol):
    """Budget and rate-limit checks before dispatch, and settlement after the request ends."""

    async def admit(self, principal: Principal, decision: RoutingDecision, req) -> object:
        """Reserve the request's worst case; raise a GatewayError (429/402/403) to refuse it."""

    def settle(self, ticket: object, trace: "RequestTrace") -> Awaitable[None] | None:
        """Turn the reservation into the actual cost and record the usage; called exactly once.
        Returns None once the record is durable, or an awaitable that makes it so (the client
        is answered only after it completes)."""


class OpenAdmission:
    """No limits: admits everything, records nothing (config keys without a store)."""

    async def admit(self, principal, decision, req):
        return None

    def settle(self, ticket, trace):
        return None


def _retryable(exc: BaseException) -> bool:
    """Failures of the backend or model (not of the request) are worth trying elsewhere; an
    upstream's own rate limit is one of them."""
    if isinstance(exc, (BackendFailed, BackendUnavailable, UpstreamRateLimited)):
        return True
    return isinstance(exc, PoolError) and exc.status >= 500


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all, and refusing a
    client that takes longer than `timeout_s` to send it (a slow client holds a connection)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(part)

    try:
        async with asyncio.timeout(timeout_s):  # no extra task per request, unlike wait_for
            await read()
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:.0f}s.") from None
    return b"".join(chunks)


def team_session(team_id: str, session_id: str | None) -> str | None:
    """An x-session-id within its team's own space: one team cannot pin, probe or share another
    team's session (its model affinity, its replica, its cached prefix)."""
    return None if not session_id else f"{team_id}/{session_id}"


class CompletionService:
    def __init__(self, backend: Backend, router: Router, authenticate: Callable[[str | None], Awaitable[Principal]],
                 metrics: GatewayMetrics, server: ServerConfig, admission: Admission | None = None,
                 recorder=None):
        self.backend = backend
        self.router = router
        self.authenticate = authenticate
        self.metrics = metrics
        self.server = server
        self.admission = admission or OpenAdmission()
        self.hooks: list[Callable[[RequestTrace], object]] = [self._record_metrics, self._log, self._settle]
        self.recorder = recorder  # gateway/learning/routed_record.RoutedRecorder: what routing learns from, after the answer
        if recorder is not None:
            self.hooks.append(recorder.finished)
        self._pending: set[asyncio.Task] = set()

    async def handle(self, request: Request, chat: bool) -> Response:
        request_id = request.state.request_id
        principal = await self.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, self.server.max_body_bytes, self.server.body_read_timeout_s)
        parsed = await parse_body(raw, ChatCompletionRequest if chat else CompletionRequest)
        gen_req = to_generation(parsed, request_id, self.server.default_max_tokens,
                                session_id=team_session(principal.team_id, request.headers.get("x-session-id")))
        gen_req.cache_salt = principal.team_id  # prefix KV is reused within a team only
        # fair share in the pool: an opaque team id and its weight, nothing else about the team (the
        # weight is the stored team's, as of the key lookup: an admin change applies within the auth cache TTL)
        gen_req.team, gen_req.weight = principal.team_id, principal.share
        context = RouteContext(principal.team_id, gen_req.messages, gen_req.prompt, gen_req.session_id,
                               tools=bool(gen_req.tools) and gen_req.tool_choice != "none",
                               structured=gen_req.response_format is not None, allowed=principal.allowed_models)
        decision = await self.router.decide(parsed.model, context)
        if decision is None:
            raise ModelNotAvailable(f"The model '{parsed.model}' does not exist or you do not have access to it.",
                                    param="model")
        gen_req.priority = decision.priority  # the route's: the weight times 2**priority in the fair queue
        if decision.fallbacks:  # never fall back to a model this key may not use
            allowed = tuple(m for m in decision.fallbacks if principal.allows_model(m))
            if allowed != decision.fallbacks:
                decision = replace(decision, fallbacks=allowed)
        ticket = await self.admission.admit(principal, decision, gen_req)
        trace = RequestTrace(request_id, "chat" if chat else "completions", principal, parsed.model, decision,
                             started=request.state.started, ticket=ticket)
        if self.recorder is not None:
            trace.routed = self.recorder.note(parsed.model, decision, context, gen_req)
        stream, first = await self._dispatch(trace, gen_req)
        confirm = getattr(self.admission, "confirm", None)
        if confirm is not None:  # the prompt is counted now: TPM takes its real size or refuses
            try:
                await confirm(trace, first.prompt_tokens)
            except BaseException as exc:
                # refused (429): nothing of it was served, so it is charged nothing and its
                # whole reservation goes back to the limit at once
                trace.prompt_tokens = trace.completion_tokens = 0
                trace.gpu_seconds = 0.0
                await stream.aclose()
                await self._finish_durably(trace, exc)
                raise
        builder = ResponseBuilder(chat, ("chatcmpl-" if chat else "cmpl-") + request_id, trace.decision.model,
                                  n=gen_req.n, logprobs=gen_req.logprobs)
        headers = trace.decision.headers()
        if parsed.stream:  # overhead until the headers leave: everything but the wait for the first token
            headers["x-muxgate-overhead-ms"] = self._overhead_ms(trace)
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            events = self._events(first, stream, builder, trace, include_usage)
            return SettlingStreamingResponse(events, on_close=lambda: self._abandoned(trace, stream),
                                             media_type="text/event-stream",
                                             headers={**headers, "cache-control": "no-cache"})
        return await self._collect(request, first, stream, builder, trace, headers)

    async def _dispatch(self, trace: RequestTrace, gen_req) -> tuple[AsyncIterator[GenerationChunk], GenerationChunk]:
        """Send to the routed model; if it fails before its first token, try the decision's fallbacks."""
        candidates = [trace.decision.model, *trace.decision.fallbacks]
        for attempt, model in enumerate(candidates):
            if attempt:
                trace.decision = replace(trace.decision, model=model, reason=f"{trace.decision.reason}+fallback")
            draft = trace.decision.draft_for(model)
            req = replace(gen_req, draft_model=draft, draft_tokens=trace.decision.draft_tokens) if draft else gen_req
            stream = _guarded(self.backend.generate(model, req), model, trace.request_id,
                              self.server.stream_idle_timeout_s)
            waited = time.perf_counter()
            try:
                first = await self._first_chunk(stream, model)
            except BaseException as exc:
                if attempt + 1 < len(candidates) and _retryable(exc):
                    log.warning("request %s: %s failed before its first token (%s); falling back to %s",
                                trace.request_id, model, type(exc).__name__, candidates[attempt + 1])
                    continue
                self._finish(trace, exc)
                raise
            trace.observe(first)
            trace.backend_seconds += time.perf_counter() - waited
            return stream, first
        raise AssertionError("unreachable")

    async def _first_chunk(self, stream: AsyncIterator[GenerationChunk], model: str) -> GenerationChunk:
        """Errors before the first token still get a proper HTTP status, so wait for it here."""
        try:
            async with asyncio.timeout(self.server.stream_first_token_timeout_s):
                return await anext(stream)
        except TimeoutError:
            await stream.aclose()
            raise BackendUnavailable(f"model '{model}' produced no token within "
                                     f"{self.server.stream_first_token_timeout_s:.0f}s", retry_after=5) from None
        except StopAsyncIteration:
            raise BackendUnavailable(f"model '{model}' returned an empty stream") from None

    async def _collect(self, request: Request, first: GenerationChunk, stream, builder: ResponseBuilder,
                       trace: RequestTrace, headers: dict) -> Response:
        """Non-streamed answer; stops generating if the client disconnects while it waits."""
        builder.add(first)

        async def drain():
            started = time.perf_counter()
            try:
                async for chunk in stream:
                    trace.observe(chunk)
                    builder.add(chunk)
                    if builder.done:
                        break
            finally:
                trace.backend_seconds += time.perf_counter() - started

        try:
            if not builder.done and not await _unless_disconnected(drain(), request):
                trace.status = "client_disconnect"
                self._finish(trace, None)
                return Response(status_code=499)
        except BaseException as exc:
            self._finish(trace, exc)
            raise
        finally:
            await stream.aclose()
        headers["x-muxgate-overhead-ms"] = self._overhead_ms(trace)
        if trace.routed is not None and trace.routed.keep_answer:
            trace.answer = builder.text()
        await self._finish_durably(trace, None)
        return JSONResponse(builder.full(trace.prompt_tokens, trace.completion_tokens), headers=headers)

    async def _events(self, first: GenerationChunk, stream, builder: ResponseBuilder, trace: RequestTrace,
                      include_usage: bool) -> AsyncIterator[bytes]:
        error: BaseException | None = None
        done = False
        try:
            for event in builder.opening():
                yield sse(event)
            chunk = first
            while True:
                event = builder.delta(chunk)
                if event is not None:
                    yield sse(event)
                builder.add(chunk, collect=trace.routed is not None and trace.routed.keep_answer)
                if chunk.finish_reason is not None:
                    yield sse(builder.finish(chunk))
                    if builder.done:
                        break
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    if builder.finished:  # a backend that served fewer choices than were asked for
                        break
                    raise BackendFailed("The backend's stream ended before its answer did.") from None
                trace.observe(chunk)
            if include_usage:
                yield sse(builder.usage_chunk(trace.prompt_tokens, trace.completion_tokens))
            await stream.aclose()
            if trace.routed is not None and trace.routed.keep_answer:
                trace.answer = builder.text()
            await self._finish_durably(trace, None)
            yield sse("[DONE]")
            done = True
        except Exception as exc:  # headers are gone: report in-band, as OpenAI does
            error = exc
            _, body, _ = describe(exc, trace.request_id)
            await stream.aclose()
            await self._finish_durably(trace, exc)
            yield sse(body)
        finally:
            # not done and no error: the client went away (Starlette closed or cancelled us)
            await stream.aclose()
            if not done and error is None:
                trace.status = "client_disconnect"
            self._finish(trace, error)

    @staticmethod
    def _overhead_ms(trace: RequestTrace) -> str:
        ms = max(0.0, (time.perf_counter() - trace.started - trace.backend_seconds) * 1000)
        trace.extra["overhead_ms"] = round(ms, 3)
        return f"{ms:.3f}"

    async def _abandoned(self, trace: RequestTrace, stream) -> None:
        """The response is over; if its events never ran (the client left before the first
        byte), the request still ends here: backend closed, usage settled."""
        if trace.finished_at is None:
            trace.status = "client_disconnect"
            await stream.aclose()
            self._finish(trace, None)

    async def _finish_durably(self, trace: RequestTrace, error: BaseException | None) -> None:
        """Finish and wait for the usage record to be written (or buffered) before the client
        hears that the request is over: a gateway killed right after answering loses nothing."""
        tasks = self._finish(trace, error)
        if tasks:
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    def _finish(self, trace: RequestTrace, error: BaseException | None) -> list[asyncio.Task]:
        if trace.finished_at is not None:  # exactly once, whichever path ends the request
            return []
        trace.finished_at = time.perf_counter()
        tasks: list[asyncio.Task] = []
        if error is not None:
            status, body, _ = describe(error, trace.request_id)
            trace.status = "error"
            trace.error_code = body["error"]["code"]
            trace.extra["http_status"] = status
        for hook in self.hooks:
            try:
                result = hook(trace)
                if result is not None:
                    # its own task: a cancelled response (client gone) must not cancel settlement
                    task = asyncio.ensure_future(result)
                    self._pending.add(task)
                    task.add_done_callback(self._hook_done)
                    tasks.append(task)
            except Exception:
                log.exception("completion hook failed for %s", trace.request_id)
        return tasks

    def _hook_done(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("completion hook failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for settlement tasks still running (at shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _settle(self, trace: RequestTrace) -> Awaitable[None] | None:
        return self.admission.settle(trace.ticket, trace)

    def _log(self, trace: RequestTrace) -> None:
        """One line per request; ids and numbers only, never the key or the text."""
        if not log.isEnabledFor(logging.INFO):
            return
        log.info("request finished", extra={
            "request_id": trace.request_id, "endpoint": trace.endpoint, "team": trace.principal.team_id,
            "key_id": trace.principal.key_id, "requested_model": trace.requested_model, "model": trace.decision.model,
            "route": trace.decision.reason, "status": trace.status, "error": trace.error_code,
            "prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens,
            "tool_calls": trace.tool_calls, "constrained": trace.constrained,
            "latency_ms": round((trace.finished_at - trace.started) * 1000, 2),
            "ttft_ms": round((trace.first_token_at - trace.started) * 1000, 2) if trace.first_token_at else None,
            "overhead_ms": trace.extra.get("overhead_ms")})

    def _record_metrics(self, trace: RequestTrace) -> None:
        self.metrics.request_finished(
            trace.endpoint, trace.decision.model, trace.decision.reason, trace.status,
            trace.finished_at - trace.started,
            None if trace.first_token_at is None else trace.first_token_at - trace.started,
            trace.prompt_tokens, trace.completion_tokens)


async def _unless_disconnected(work: Awaitable[None], request: Request) -> bool:
    """Await ``work`` in this task while one watcher task waits for the client to disconnect;
    False if it did first (``work`` was then cancelled and has unwound). A cancellation from
    anywhere else propagates as usual."""
    task = asyncio.current_task()
    left = False

    async def watch() -> None:
        nonlocal left
        await _wait_disconnect(request)
        left = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:
            return False
        raise
    finally:
        watcher.cancel()
    return True


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _guarded(stream: AsyncIterator[GenerationChunk], model: str, request_id: str, idle_s: float):
    """Typed errors pass through; anything else from a backend is a 502 the operator can trace.
    After the first chunk (whose wait has its own deadline) a stream silent for `idle_s` fails:
    a replica stuck mid-answer must not hold the request, its reservation and its slot forever."""
    try:
        chunk = await anext(stream, None)
        while chunk is not None:
            yield chunk
            deadline = asyncio.timeout(idle_s)
            try:
                async with deadline:
                    chunk = await anext(stream, None)
            except TimeoutError:
                if not deadline.expired():  # the backend's own timeout, not this deadline
                    raise
                raise BackendUnavailable(f"model '{model}' sent nothing for {idle_s:g}s mid-answer",
                                         retry_after=5) from None
    except (GatewayError, PoolError):
        raise
    except Exception as exc:
        log.error("backend failed serving %s for request %s", model, request_id, exc_info=exc)
        raise BackendFailed(f"The backend failed while serving '{model}' ({type(exc).__name__}).") from exc
    finally:
        await stream.aclose()
