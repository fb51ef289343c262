"""Remote OpenAI-compatible upstreams (a hosted API, an existing vLLM server) as Backends.

A request is sent as a streamed chat/completions call and turned back into GenerationChunks,
so streaming, usage and errors look the same to the gateway whichever backend served them. The
agent fields (tools, tool_choice, response_format, n, logprobs, penalties, logit_bias) go to the
upstream as the client sent them, and its tool-call deltas, logprobs, choices and finish reasons
come back into the chunks unchanged: the upstream enforces what it was asked to.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import AsyncIterator

from gateway.http.errors import BackendFailed, BackendUnavailable, BadRequest, UpstreamRateLimited
from gateway.tenancy.estimate import prompt_token_estimate
from gateway.upstreams.http_client import ConnectionFailed, HTTPClient, Response, clean_headers
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
        _agent_fields(body, req)
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
            async for chunk in _parse_stream(resp, prompt_token_estimate(req), asked_to_enforce(req)):
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


async def _parse_stream(resp: Response, prompt_estimate: int = 0,
                        constrained: str | None = None) -> AsyncIterator[GenerationChunk]:
    # until the upstream's usage event (the last one) says otherwise, the prompt counts as its
    # estimate: a stream that ends without usage (the client left, or the upstream ignores
    # include_usage) is then charged for its prompt, which the upstream bills anyway, not for nothing
    prompt_tokens, completion_tokens = prompt_estimate, None
    counts: dict[int, int] = {0: 0}  # per choice: an estimate until the usage event gives the total
    finish: dict[int, str] = {}
    async for events in _sse_events(resp):
        # the content of the events that arrived together goes on in as few chunks as possible:
        # they reach the client at the same moment either way, and every chunk passes several
        # generators; a choice's text merges, tool-call deltas and other choices start a new chunk
        pieces: list[GenerationChunk] = []
        for event in events:
            if "error" in event:
                for piece in pieces:
                    yield piece
                raise BackendFailed(f"upstream error: {event['error'].get('message', 'unknown')}")
            usage = event.get("usage")
            if usage:
                prompt_tokens = _count(usage.get("prompt_tokens"), prompt_tokens)
                completion_tokens = _count(usage.get("completion_tokens"), completion_tokens)
            for choice in event.get("choices") or []:
                index = _count(choice.get("index"), 0)
                delta = choice.get("delta") or {}
                text = delta.get("content") or choice.get("text") or ""
                calls = delta.get("tool_calls") or None
                logprobs = _logprob_entries(choice.get("logprobs"))
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"]
                if not (text or calls or logprobs):
                    continue
                counts[index] = counts.get(index, 0) + (len(logprobs) if logprobs else 1)
                last = pieces[-1] if pieces else None
                if last is not None and last.index == index and not calls and not last.tool_calls:
                    last.text += text
                    last.completion_tokens = counts[index]
                    if logprobs:
                        last.logprobs = (last.logprobs or []) + logprobs
                    continue
                pieces.append(GenerationChunk(text, None, prompt_tokens, counts[index], index=index,
                                              tool_calls=calls, logprobs=logprobs))
        for piece in pieces:
            piece.prompt_tokens = prompt_tokens
            yield piece
    # the final chunks (one per choice) carry the upstream's exact usage (include_usage) as the
    # pool's do, or the estimates when the upstream sent none
    for index in finish:  # a choice that finished without content is still a choice
        counts.setdefault(index, 0)
    exact = _split_total(completion_tokens, counts) if completion_tokens is not None else counts
    for index in sorted(counts):
        yield GenerationChunk("", finish.get(index) or "stop", prompt_tokens, exact[index], index=index,
                              constrained=constrained, gpu_seconds=0.0, replica="upstream")


def _split_total(total: int, estimates: dict[int, int]) -> dict[int, int]:
    """The usage event's completion tokens (one total over the choices) as per-choice counts
    that sum to it exactly, in proportion to each choice's estimate."""
    indexes = sorted(estimates)
    weights = [estimates[i] for i in indexes]
    if not sum(weights):
        weights = [1] * len(indexes)
    out = {i: total * w // sum(weights) for i, w in zip(indexes, weights)}
    out[indexes[0]] += total - sum(out.values())
    return out


def _logprob_entries(logprobs) -> list[dict] | None:
    """OpenAI's per-token entries from a choice's logprobs, chat ({"content": [...]}) or the
    legacy completions shape (parallel lists)."""
    if not isinstance(logprobs, dict):
        return None
    if "content" in logprobs:
        return logprobs.get("content") or None
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    return [{"token": t, "logprob": values[i] if i < len(values) else None, "bytes": list(t.encode("utf-8")),
             "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))}
                              for k, v in ((tops[i] if i < len(tops) else None) or {}).items()]}
            for i, t in enumerate(tokens)] or None


def asked_to_enforce(req: GenerationRequest) -> str | None:
    """What an upstream was asked to constrain the answer to, for the ledger (as the pool's
    engine reports the grammar it used)."""
    if req.response_format and req.response_format.get("type") in ("json_schema", "json_object"):
        return req.response_format["type"]
    if req.tools and (req.tool_choice == "required" or isinstance(req.tool_choice, dict)):
        return "tool_call"
    return None


def _agent_fields(body: dict, req: GenerationRequest) -> None:
    """The agent and sampling fields, as the client sent them; defaults are left out so an
    upstream that does not know a field is not asked about it."""
    for key in ("tools", "tool_choice", "parallel_tool_calls", "response_format"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.n != 1:
        body["n"] = req.n
    if req.presence_penalty:
        body["presence_penalty"] = req.presence_penalty
    if req.frequency_penalty:
        body["frequency_penalty"] = req.frequency_penalty
    if req.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in req.logit_bias.items()}
    if req.logprobs:
        if req.messages is None:  # the legacy endpoint's logprobs is the number of alternatives
            body["logprobs"] = req.top_logprobs
        else:
            body["logprobs"] = True
            if req.top_logprobs:
                body["top_logprobs"] = req.top_logprobs
    body.update(req.passthrough)


def _count(reported, otherwise: int) -> int:
    return reported if isinstance(reported, int) and reported >= 0 else otherwise


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """An upstream's Retry-After, which RFC 9110 lets be seconds or an HTTP date; 1 s when it is
    missing or unreadable (it used to fail the whole answer with 502 on a date)."""
    if not value:
        return 1.0
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 1.0
    return max(0.0, when - (time.time() if now is None else now))


def _upstream_error(name: str, status: int, headers, body: bytes) -> Exception:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace")
    if status == 429:
        return UpstreamRateLimited(f"upstream for '{name}' is rate limiting: {message}",
                                   retry_after=retry_after_seconds(headers.get("retry-after")))
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
