"""Remote OpenAI-compatible upstreams (a hosted API, an existing vLLM server) as Backends.

A request is sent as a streamed chat/completions call and turned back into GenerationChunks,
so streaming, usage and errors look the same to the gateway whichever backend served them.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

from gateway.errors import BackendFailed, BackendUnavailable, BadRequest, RateLimited
from gateway.estimate import prompt_token_estimate
from gateway.http_client import ConnectionFailed, HTTPClient, Response, clean_headers
from workers.types import GenerationChunk, GenerationRequest, ModelInfo

_decode = json.JSONDecoder().decode
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class UpstreamBackend:
    """One upstream model: `base_url` (ending in /v1) and the model name it knows it by."""

    def __init__(self, name: str, base_url: str, remote_model: str, api_key: str | None = None,
                 timeout_s: float = 120.0, context_length: int = 128_000):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.remote_model = remote_model
        self.context_length = context_length
        # checked here, at start-up: a key with a line break in it fails now, not on every request
        self._headers = clean_headers({"authorization": f"Bearer {api_key}"} if api_key else {})
        self._timeout_s = timeout_s
        self._http: HTTPClient | None = None

    def _client(self) -> HTTPClient:
        # one pooled client per upstream, made in the serving loop: connection reuse and a lean
        # client are most of a proxy's latency budget (aiohttp cost ~3x this one's CPU per call,
        # httpx ~4x aiohttp's)
        if self._http is None:
            self._http = HTTPClient(self.base_url, headers=self._headers, timeout_s=self._timeout_s,
                                    connect_timeout_s=5.0)
        return self._http

    def _body(self, req: GenerationRequest) -> tuple[str, dict]:
        body = {"model": self.remote_model, "stream": True, "stream_options": {"include_usage": True},
                "temperature": req.temperature, "top_p": req.top_p}
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        if req.stop:
            body["stop"] = req.stop
        if req.seed is not None:
            body["seed"] = req.seed
        if req.messages is not None:
            return "/chat/completions", {**body, "messages": req.messages}
        return "/completions", {**body, "prompt": req.prompt}

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        path, body = self._body(req)
        resp = None
        finished = False
        try:
            resp = await self._client().request("POST", path, _encode(body).encode())
            if resp.status >= 400:
                raise _upstream_error(self.name, resp.status, resp.headers, await resp.read())
            async for chunk in _parse_stream(resp, prompt_token_estimate(req)):
                # the last chunk comes after the stream's end ([DONE]); its reader may stop there
                finished = chunk.finish_reason is not None
                yield chunk
        except (ConnectionFailed, TimeoutError) as exc:
            raise BackendUnavailable(f"upstream for '{self.name}' unreachable ({type(exc).__name__}: {exc})",
                                     retry_after=1) from exc
        finally:
            if resp is not None:
                # a stream left before its end closes the connection, which stops the upstream
                resp.release(finished=finished)

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name, self.context_length, 0, 0)]

    async def stats(self) -> list[dict]:
        return []

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


_DONE = object()


def _sse_data(raw: bytes):
    """One SSE line's decoded data; None for a line without data, _DONE for [DONE]."""
    line = raw.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    return _DONE if data == b"[DONE]" else _decode(data.decode("utf-8"))


async def _sse_events(resp: Response) -> AsyncIterator[list[dict]]:
    """The stream's data events, until [DONE], in lists of those that arrived together: one
    resume of this generator per network read instead of one per event. Reads whatever the
    network delivers and splits the lines itself (a readline per SSE line cost the gateway
    several times more CPU). A line that does not decode raises after the events before it."""
    pending = b""
    async for piece in resp.iter_any():
        lines = (pending + piece).split(b"\n") if pending else piece.split(b"\n")
        pending = lines.pop()  # an incomplete last line waits for the next piece
        events: list[dict] = []
        for raw in lines:
            if b"data:" not in raw:
                continue  # the blank line after each event, comments, other fields
            try:
                event = _sse_data(raw)
            except ValueError:
                if events:
                    yield events
                raise
            if event is _DONE:
                if events:
                    yield events
                return
            if event is not None:
                events.append(event)
        if events:
            yield events
    event = _sse_data(pending)
    if event is not None and event is not _DONE:
        yield [event]


async def _parse_stream(resp: Response, prompt_estimate: int = 0) -> AsyncIterator[GenerationChunk]:
    # until the upstream's usage event (the last one) says otherwise, the prompt counts as its
    # estimate: a stream that ends without usage (the client left, or the upstream ignores
    # include_usage) is then charged for its prompt, which the upstream bills anyway, not for nothing
    prompt_tokens, completion_tokens = prompt_estimate, 0
    finish = None
    async for events in _sse_events(resp):
        # the text of the events that arrived together goes on as one chunk: they reach the
        # client at the same moment either way, and every chunk passes several generators
        texts = []
        for event in events:
            if "error" in event:
                if texts:
                    yield GenerationChunk("".join(texts), None, prompt_tokens, completion_tokens)
                raise BackendFailed(f"upstream error: {event['error'].get('message', 'unknown')}")
            usage = event.get("usage")
            if usage:
                prompt_tokens = _count(usage.get("prompt_tokens"), prompt_tokens)
                completion_tokens = _count(usage.get("completion_tokens"), completion_tokens)
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                finish = choice.get("finish_reason") or finish
                if text:
                    completion_tokens += 1  # an estimate until the usage event gives the exact count
                    texts.append(text)
        if texts:
            yield GenerationChunk("".join(texts), None, prompt_tokens, completion_tokens)
    # the final chunk carries the upstream's exact usage (include_usage) as the pool's does, or
    # the estimates when the upstream sent none
    yield GenerationChunk("", finish or "stop", prompt_tokens, completion_tokens,
                          gpu_seconds=0.0, replica="upstream")


def _count(reported, otherwise: int) -> int:
    return reported if isinstance(reported, int) and reported >= 0 else otherwise


def _upstream_error(name: str, status: int, headers, body: bytes) -> Exception:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace")
    if status == 429:
        return RateLimited(f"upstream for '{name}' is rate limiting: {message}",
                           retry_after=float(headers.get("retry-after", 1)))
    if status in (400, 404, 413, 422):
        return BadRequest(f"upstream for '{name}' refused the request: {message}")
    if status in (502, 503, 504):
        return BackendUnavailable(f"upstream for '{name}' unavailable ({status}): {message}", retry_after=1)
    return BackendFailed(f"upstream for '{name}' failed ({status})")


class RoutedBackends:
    """The gateway's one Backend: each model name goes to the backend that serves it."""

    def __init__(self, default, upstreams: dict[str, UpstreamBackend] | None = None):
        self.default = default
        self.upstreams = upstreams or {}

    def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return (self.upstreams.get(model) or self.default).generate(model, req)

    async def models(self) -> list[ModelInfo]:
        out = list(await self.default.models()) if self.default is not None else []
        for upstream in self.upstreams.values():
            out.extend(await upstream.models())
        return out

    async def stats(self) -> list[dict]:
        return await self.default.stats() if self.default is not None else []

    async def close(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.default is not None:
            await self.default.close()
