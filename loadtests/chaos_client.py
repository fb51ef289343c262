"""The chaos bench's client: it sorts every outcome into succeeded / failed cleanly / unclean,
and drives a closed-loop load that can pause around a restart.

Outcome rules (the bench's JSON and tests/reliability assert the same):
- succeeded: 200 with a whole answer (a JSON completion with usage; or an SSE stream that ends
  with a finish_reason and `[DONE]`).
- failed_clean: an OpenAI error body (`{"error": {message, type, param, code}}`) with a 4xx/5xx
  status, or a 200 stream that ends with an in-band `{"error": ...}` event. A connection error
  (reset, closed mid-body, refused) is clean ONLY for a request that was in flight at the moment
  the fault killed the process serving it (started before the kill, ended after it); the load
  pauses before a kill, so no request is sent into a dead gateway.
- unclean: anything else: a hang (no answer within the client's read timeout), a connection error
  outside a kill, a 200 whose body or stream is cut short without an error, an error without
  OpenAI's body, or a status the case did not allow (`expect`).

Records: a request is admitted when it got a 200 or failed after admission (the model, the pool or
the backend failed: codes in POST_ADMISSION_CODES). Each admitted request must leave exactly one
ledger record, matched by its x-request-id (the ledger's request_id). Requests cut by a kill have
no client-visible outcome and are not expected (their reservation expires after
`store.reservation_ttl_s`); a record they left anyway is counted as `records_extra`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from loadtests.chaos_kit import LOAD_MAX_TOKENS, MODEL

# Errors raised after admission reserved the request: each leaves a ledger record.
POST_ADMISSION_CODES = {"model_load_failed", "pool_overloaded", "pool_error", "backend_unavailable",
                        "backend_error", "context_length_exceeded"}
CLIENT_TIMEOUT = httpx.Timeout(connect=5.0, read=45.0, write=10.0, pool=10.0)


def chat(model: str = MODEL, max_tokens: int = LOAD_MAX_TOKENS, content: str = "Hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


# ---- outcomes -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the client saw for one request."""

    label: str
    stream: bool
    started: float = 0.0
    ended: float = 0.0
    status: int | None = None
    request_id: str | None = None
    error: dict | None = None  # OpenAI's error object, from the body or an in-band SSE event
    in_band: bool = False
    retry_after: str | None = None
    transport: str | None = None  # the exception name when the connection failed
    problem: str | None = None  # set: unclean, and why
    text: str = ""
    chunks: int = 0  # SSE events with content
    usage: dict | None = None
    expect: tuple = ()  # statuses this request may get (bad input); empty: any clean outcome

    @property
    def code(self) -> str | None:
        return (self.error or {}).get("code")

    @property
    def succeeded(self) -> bool:
        return self.status == 200 and self.error is None and self.transport is None and self.problem is None

    @property
    def admitted(self) -> bool:
        """Reserved by admission: it must leave one ledger record."""
        if self.transport is not None or self.status is None:
            return False
        return self.status == 200 or self.code in POST_ADMISSION_CODES

    def brief(self) -> str:
        return (f"{self.label}: status={self.status} code={self.code} transport={self.transport} "
                f"problem={self.problem}")


def _openai_error(obj) -> dict | None:
    """The error object if `obj` is OpenAI's error body, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
        return None
    err = obj["error"]
    if {"message", "type", "param", "code"} <= set(err) and isinstance(err["message"], str) and err["message"]:
        return err
    return None


def _read_stream_event(o: Outcome, data: str, state: dict) -> None:
    if data == "[DONE]":
        state["done"] = True
        return
    try:
        event = json.loads(data)
    except ValueError:
        o.problem = f"SSE event is not JSON: {data[:80]!r}"
        return
    if "error" in event:
        o.error, o.in_band = _openai_error(event), True
        if o.error is None:
            o.problem = f"in-band error without OpenAI's body: {data[:200]}"
        return
    if event.get("usage"):
        o.usage = event["usage"]
    for choice in event.get("choices") or []:
        content = (choice.get("delta") or {}).get("content") or choice.get("text")
        if content:
            o.text += content
            o.chunks += 1
        if choice.get("finish_reason"):
            state["finished"] = True


async def call(client: httpx.AsyncClient, base_url: str, key: str | None, body: dict | bytes | None = None, *,
               stream: bool = False, label: str = "load", headers: dict | None = None, expect: tuple = (),
               path: str = "/v1/chat/completions", content=None, on_chunk: Callable[[Outcome], None] | None = None
               ) -> Outcome:
    """POST one completion and sort what came back (see the module's rules)."""
    o = Outcome(label, stream, expect=expect)
    hdrs = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    hdrs.update(headers or {})
    if content is None:
        if isinstance(body, dict):
            body = {**body, "stream": True} if stream else body
            content = json.dumps(body).encode()
        else:
            content = body
    o.started = time.monotonic()
    try:
        async with client.stream("POST", base_url + path, content=content, headers=hdrs) as resp:
            o.status = resp.status_code
            o.request_id = resp.headers.get("x-request-id")
            o.retry_after = resp.headers.get("retry-after")
            if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith("text/event-stream"):
                raw = await resp.aread()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                if resp.status_code == 200:
                    choices = (parsed or {}).get("choices") if isinstance(parsed, dict) else None
                    if stream or not choices or "usage" not in parsed:
                        o.problem = f"200 without a whole completion: {raw[:200]!r}"
                    else:
                        o.text = choices[0].get("message", {}).get("content") or choices[0].get("text") or ""
                        o.usage = parsed["usage"]
                else:
                    o.error = _openai_error(parsed)
                    if o.error is None:
                        o.problem = f"{resp.status_code} without OpenAI's error body: {raw[:200]!r}"
                    elif resp.status_code < 400:
                        o.problem = f"unexpected status {resp.status_code}"
            else:
                state = {"done": False, "finished": False}
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        _read_stream_event(o, line[6:], state)
                        if on_chunk is not None:
                            on_chunk(o)
                if o.problem is None and o.error is None and not (state["done"] and state["finished"]):
                    o.problem = "stream ended without [DONE] or an error event (truncated)"
    except httpx.TimeoutException as exc:
        o.transport, o.problem = type(exc).__name__, "no answer within the client's timeout (a hang)"
    except httpx.TransportError as exc:
        o.transport = type(exc).__name__
    o.ended = time.monotonic()
    if o.expect and o.problem is None and o.transport is None and o.status not in o.expect:
        o.problem = f"expected status {sorted(o.expect)}, got {o.status} ({o.code})"
    return o


def verdict(o: Outcome, kills: list[float] = ()) -> str:
    """succeeded | failed_clean | unclean, with the kill moments of the fault."""
    if o.problem is not None:
        return "unclean"
    if o.transport is not None:
        return "failed_clean" if any(o.started <= k <= o.ended for k in kills) else "unclean"
    if o.succeeded:
        return "succeeded"
    return "failed_clean" if o.error is not None else "unclean"


def tally(outcomes: list[Outcome], kills: list[float] = ()) -> dict:
    counts = {"sent": len(outcomes), "succeeded": 0, "failed_clean": 0, "unclean": 0}
    problems = []
    for o in outcomes:
        v = verdict(o, kills)
        counts[v] += 1
        if v == "unclean" and len(problems) < 8:
            problems.append(o.brief() if o.problem is None else f"{o.label}: {o.problem}")
    counts["unclean_examples"] = problems
    return counts


# ---- the load -----------------------------------------------------------------------------------


class Load:
    """Closed-loop clients sending small requests (every other one streamed) until stopped.
    `gate` pauses them (before a kill, until the restart); `renew()` drops pooled connections
    that point at a process that is gone."""

    def __init__(self, targets: list[Callable[[], str]] | Callable[[], str], key: str, workers: int = 3,
                 max_tokens: int = LOAD_MAX_TOKENS, model: str = MODEL, label: str = "load"):
        self.targets = targets if isinstance(targets, list) else [targets]
        self.key = key
        self.workers = workers
        self.max_tokens = max_tokens
        self.model = model
        self.label = label
        self.outcomes: list[Outcome] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.stopping = asyncio.Event()
        self.changed = asyncio.Event()
        self.client = self._client()
        self._tasks: list[asyncio.Task] = []

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=httpx.Limits(max_connections=64))

    async def renew(self) -> None:
        old, self.client = self.client, self._client()
        asyncio.get_running_loop().create_task(old.aclose())

    def start(self) -> "Load":
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def _worker(self, i: int) -> None:
        n = 0
        while not self.stopping.is_set():
            await self.gate.wait()
            if self.stopping.is_set():
                return
            target = self.targets[i % len(self.targets)]()
            stream = (i + n) % 2 == 0
            o = await call(self.client, target, self.key, chat(self.model, self.max_tokens), stream=stream,
                           label=self.label)
            n += 1
            self.outcomes.append(o)
            self.changed.set()
            if not o.succeeded:  # refusals come back at once: do not spin on them
                await asyncio.sleep(0.1)

    def quota_refusals_since(self, since: float | None) -> int:
        return sum(1 for o in self.outcomes if o.code == "insufficient_quota" and (since is None or o.started >= since))

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
        return True

    async def until_count(self, n: int, timeout_s: float = 60.0) -> bool:
        return await self.wait_for(lambda: len(self.outcomes) >= n, timeout_s)

    async def until_budget_hit(self, max_requests: int, timeout_s: float = 60.0, since: float | None = None) -> bool:
        """Run until there were as many budget refusals as workers (or `max_requests` requests);
        `since` (a time.monotonic()): count only refusals of requests started from then on."""
        return await self.wait_for(lambda: self.quota_refusals_since(since) >= self.workers
                                   or len(self.outcomes) >= max_requests, timeout_s)

    async def stop(self) -> list[Outcome]:
        self.stopping.set()
        self.gate.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
        return self.outcomes


class LongStream:
    """One long streamed request, for killing something while it is mid-stream."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, key: str, max_tokens: int = 400,
                 label: str = "long-stream"):
        self.seen = asyncio.Event()
        self.want = 3
        self.task = asyncio.create_task(call(client, base_url, key, chat(MODEL, max_tokens), stream=True,
                                             label=label, on_chunk=self._chunk))

    def _chunk(self, o: Outcome) -> None:
        if o.chunks >= self.want:
            self.seen.set()

    async def streaming(self, timeout_s: float = 60.0) -> bool:
        """True once a few content chunks have arrived (it is mid-stream)."""
        waiter = asyncio.ensure_future(self.seen.wait())
        done, _ = await asyncio.wait({waiter, self.task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return self.seen.is_set()

    async def result(self) -> Outcome:
        return await self.task
