"""A lean pooled HTTP/1.1 client for the gateway's calls to remote upstreams.

aiohttp's client cost ~285 µs of CPU per streamed upstream call on the 2-core reference machine
(a fifth of everything the gateway did for a request), this one ~96 µs
(`python -m loadtests.upstream_client_bench`, docs/BENCHMARKS.md). It
does what an OpenAI-compatible upstream needs and no more: HTTP/1.1 over TCP or TLS; keep-alive
connections reused most-recent-first; bodies by Content-Length, chunked or until close (httptools
parses them); gzip and deflate answers; a connect timeout and a deadline for the whole call;
backpressure on a slow reader; and one retry of a call whose reused idle connection turned out to
be closed by the server before any byte of an answer came (the server never saw that request).
No cookies, redirects, proxies or HTTP/2: an upstream API needs none of them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from typing import AsyncIterator
from urllib.parse import urlsplit

import httptools

# a reader this far behind stops the socket being read until it catches up
_PAUSE_ABOVE = 256 * 1024
# after the caller has read what it needs (an SSE stream's [DONE]), the rest of the message (the
# chunked terminator) may still be in flight: wait this long for it before dropping the connection
_DRAIN_S = 1.0
_DRAIN_MAX_BYTES = 64 * 1024


class ConnectionFailed(ConnectionError):
    """The upstream could not be reached, or broke the connection before the answer was whole."""


def split_base_url(base_url: str):
    """``base_url`` split (urllib's SplitResult), or ValueError unless it is http(s) with a host
    and a valid port: the one check both the config and the client make."""
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, e.g. https://api.example.com/v1, "
                         f"not {base_url!r}")
    try:
        url.port
    except ValueError as exc:
        raise ValueError(f"has an invalid port ({exc}): {base_url!r}") from None
    return url


def clean_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """Headers as sent: values without surrounding whitespace (a key read from a file often ends
    in a newline); a line break inside a name or value would inject headers, so it is refused."""
    out = {}
    for name, value in (headers or {}).items():
        value = str(value).strip()
        if any(c in name or c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} contains a line break or NUL")
        out[name] = value
    return out


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one call at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.on_done = None  # set while draining: called with True (reusable) or False
        self.drained = 0
        self.pool: HTTPClient | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.response is None and self.on_done is None:
            self.abort()  # bytes nobody asked for: the connection is not in a state to reuse
            return
        if self.response is not None:
            self.response.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.response is not None:
                self.response._abort(ConnectionFailed(f"malformed HTTP answer from the upstream: {exc}"))
            else:
                self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_done is not None:
            self.on_done, done = None, self.on_done
            done(False)
        response = self.response
        if response is None:
            return
        if response.status and response.until_close and exc is None:
            response._complete()  # a body delimited by the connection's close is whole now
        else:
            reason = f": {exc}" if exc else ""
            response._fail(ConnectionFailed(f"upstream closed the connection before the answer was whole{reason}"))

    def pause_writing(self) -> None:  # a request body is one write; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            response._headers_done(self.parser.get_status_code(), self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)
        elif self.on_done is not None:
            self.drained += len(body)
            if self.drained > _DRAIN_MAX_BYTES:
                self.abort()

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._complete()
        elif self.on_done is not None:
            self.on_done, done = None, self.on_done
            done(self.parser.should_keep_alive())

    # ---------------------------------------------------------------------------------------------

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """One call's answer: ``status`` and ``headers`` (lower-case names) once returned by
    ``HTTPClient.request``; the body through ``iter_any()`` or ``read()``. ``release()`` must be
    called when done with it (in a ``finally``)."""

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop):
        self._conn = conn
        self._loop = loop
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.until_close = False
        self.received = False  # any byte of an answer arrived
        self.complete = False
        self._error: BaseException | None = None
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._headers_ready = loop.create_future()
        self._decompress = None
        self._timer: asyncio.TimerHandle | None = None
        self._released = False
        self._holds_slot = True  # of the client's max_connections; given back by release()

    # --- fed by the connection -------------------------------------------------------------------

    def _headers_done(self, status: int, keep_alive: bool) -> None:
        self.status, self.keep_alive = status, keep_alive
        headers = self.headers
        self.until_close = ("content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
                            and status not in (204, 304) and not 100 <= status < 200)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decompress = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib, by header
        elif encoding not in ("identity", ""):
            self._abort(ConnectionFailed(f"upstream answered with unsupported content-encoding {encoding!r}"))
            return
        if not self._headers_ready.done():
            self._headers_ready.set_result(None)

    def _feed(self, body: bytes) -> None:
        if self._decompress is not None:
            try:
                body = self._decompress.decompress(body)
            except zlib.error as exc:
                self._abort(ConnectionFailed(f"upstream answer does not decompress: {exc}"))
                return
            if not body:
                return
        self._pieces.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_ABOVE and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _complete(self) -> None:
        if self._decompress is not None:
            tail = self._decompress.flush()
            if tail:
                self._pieces.append(tail)
        self.complete = True
        self._cancel_timer()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.complete or self._error is not None:
            return
        self._error = exc
        self._cancel_timer()
        if not self._headers_ready.done():
            self._headers_ready.set_exception(exc)
            self._headers_ready.exception()  # retrieved: a failed call nobody awaits logs nothing
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abort(self, exc: BaseException) -> None:
        """Fail the call with ``exc`` and drop its connection (its state is unknown now)."""
        self._fail(exc)
        self._conn.abort()

    def _timed_out(self) -> None:
        self._timer = None
        self._abort(TimeoutError("upstream call exceeded its deadline"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- read by the caller ----------------------------------------------------------------------

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each step yields all that came since the last one."""
        while True:
            if self._pieces:
                pieces = self._pieces
                data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    if self._conn.transport is not None:
                        self._conn.transport.resume_reading()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self.complete:
                return
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_any()])

    def release(self, finished: bool = False) -> None:
        """Give the connection back: to the pool when the answer was read whole (or, with
        ``finished``, when the caller has all it needs and only the message's end is still on
        its way); else it is closed, which also stops an upstream still generating."""
        if self._released:
            return
        self._released = True
        self._cancel_timer()
        conn, self._conn.response = self._conn, None
        pool = conn.pool
        if self._holds_slot:
            pool._slots.release()
        if self.complete and self.keep_alive and not conn.closed:
            pool._put(conn)
        elif finished and self._error is None and self.keep_alive and not conn.closed:
            pool._drain(conn)
        else:
            conn.abort()


class HTTPClient:
    """Calls to one upstream origin (``base_url``: scheme, host, port and a path prefix)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout_s: float = 120.0,
                 connect_timeout_s: float = 5.0, keepalive_s: float = 15.0, max_connections: int = 512,
                 ssl_context: ssl.SSLContext | None = None):
        url = split_base_url(base_url)
        self.host = url.hostname
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        host_header = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal keeps its brackets
        if self.port != (443 if self.tls else 80):
            host_header += f":{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in clean_headers(headers).items())
        self._common = (f"host: {host_header}\r\nuser-agent: muxgate\r\naccept-encoding: identity\r\n"
                        f"{extra}").encode("latin-1")
        self._heads: dict[tuple[str, str], bytes] = {}
        self._idle: deque[_Connection] = deque()  # oldest first: put at the right, reused from the right
        self._draining: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    def _head(self, method: str, path: str) -> bytes:
        head = self._heads.get((method, path))
        if head is None:
            head = f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1") + self._common
            self._heads[(method, path)] = head
        return head

    async def request(self, method: str, path: str, body: bytes = b"",
                      content_type: str = "application/json") -> Response:
        """Send a call and return once the answer's status and headers are in. The caller
        must ``release()`` the response when done with it (in a ``finally``)."""
        if self._closed:
            raise ConnectionFailed("HTTP client is closed")
        loop = asyncio.get_running_loop()
        message = b"%scontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
            self._head(method, path), content_type.encode("latin-1"), len(body), body)
        deadline = loop.time() + self.timeout_s
        await self._slots.acquire()
        response = None
        try:
            conn, reused = await self._connection(loop, fresh=False)
            response = self._send(conn, message, loop, deadline)
            try:
                await response._headers_ready
            except ConnectionFailed:
                if not reused or response.received:
                    raise
                # a reused idle connection the server had just closed: it never saw this call
                response._holds_slot = False
                response.release()
                response = None
                conn, _ = await self._connection(loop, fresh=True)
                response = self._send(conn, message, loop, deadline)
                await response._headers_ready
            return response
        except BaseException:
            if response is not None:
                response.release()  # closes its connection, gives the slot back
            else:
                self._slots.release()
            raise

    def _send(self, conn: _Connection, message: bytes, loop, deadline: float) -> Response:
        response = Response(conn, loop)
        conn.response = response
        response._timer = loop.call_at(deadline, response._timed_out)
        conn.transport.write(message)
        return response

    async def _connection(self, loop, fresh: bool) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()  # most recent first: the likeliest to be still open
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn, True
            conn.abort()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None)
        except TimeoutError:
            raise ConnectionFailed(f"connecting to {self.host}:{self.port} took over "
                                   f"{self.connect_timeout_s:g}s") from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        conn.pool = self
        return conn, False

    def _put(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        conn.idle_since = now = time.monotonic()
        idle = self._idle
        idle.append(conn)
        # connections left idle past keepalive_s (after a burst, say) are closed rather than
        # kept open until reused: the oldest are at the left
        while idle[0] is not conn and (idle[0].closed or now - idle[0].idle_since >= self.keepalive_s):
            idle.popleft().abort()

    def _drain(self, conn: _Connection) -> None:
        """Wait briefly for the rest of a message the caller no longer needs, then pool the
        connection (or close it if the rest does not come, or is large)."""
        conn.drained = 0
        self._draining.add(conn)
        timer = asyncio.get_running_loop().call_later(_DRAIN_S, conn.abort)

        def done(reusable: bool) -> None:
            timer.cancel()
            self._draining.discard(conn)
            if reusable and not conn.closed:
                self._put(conn)
            else:
                conn.abort()

        conn.on_done = done

    async def close(self) -> None:
        self._closed = True
        for conn in [*self._idle, *self._draining]:
            conn.abort()
        self._idle.clear()

