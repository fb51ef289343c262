"""The gateway's upstream HTTP client against real sockets: what a user would notice is an answer
cut short or corrupted, an abandoned stream that keeps a paid upstream generating, a call that
hangs past its deadline, or a new connection per call (latency)."""

import asyncio
import gzip
import ssl

import pytest

from gateway.upstreams.http_client import ConnectionFailed, HTTPClient
from loadtests.gateway_overhead import read_http_message


class Upstream:
    """An asyncio TCP server whose handler speaks raw HTTP; counts connections."""

    def __init__(self, handler, ssl_context=None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.closed_by_peer = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://localhost:{port}/v1"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo_forever(up, reader, writer):
    while True:
        head, body = await read_http_message(reader)
        writer.write(answer(head.split(b"\r\n")[0] + b"|" + body))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def call(client, body=b"{}", path="/chat/completions") -> tuple[int, bytes]:
    response = await client.request("POST", path, body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


def test_sequential_calls_share_one_kept_alive_connection():
    async def go():
        async with Upstream(echo_forever) as up:
            client = HTTPClient(up.url)
            answers = [await call(client, b'{"n": %d}' % i) for i in range(5)]
            await client.close()
            return up.connections, answers

    connections, answers = run(go())
    assert connections == 1
    assert answers[3] == (200, b'POST /v1/chat/completions HTTP/1.1|{"n": 3}')


def test_a_chunked_answer_streams_as_it_arrives_and_arrives_whole():
    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await up.go_on.wait()
        writer.write(b"7\r\n second\r\n0\r\n\r\n")
        await reader.read()

    async def go():
        async with Upstream(handler) as up:
            up.go_on = asyncio.Event()
            client = HTTPClient(up.url)
            response = await client.request("POST", "/x", b"{}")
            pieces = response.iter_any()
            first = await anext(pieces)  # before the upstream has sent the rest
            up.go_on.set()
            rest = b"".join([p async for p in pieces])
            response.release()
            await client.close()
            return first, rest

    assert run(go()) == (b"first", b" second")


def test_an_answer_delimited_by_close_is_read_whole_and_its_connection_not_reused():
    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url)
            answers = [await call(client), await call(client)]
            await client.close()
            return up.connections, answers

    connections, answers = run(go())
    assert answers == [(200, b"all of it")] * 2 and connections == 2


def test_a_gzip_answer_is_decompressed():
    payload = b'{"choices": []}' * 100

    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(answer(gzip.compress(payload), b"content-encoding: gzip\r\n"))
        await reader.read()

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url)
            out = await call(client)
            await client.close()
            return out

    assert run(go()) == (200, payload)


def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one():
    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(answer(b"ok"))
        await read_http_message(reader)  # the next call on this connection: close without answering
        up.dropped = True

    async def go():
        async with Upstream(handler) as up:
            up.dropped = False
            client = HTTPClient(up.url)
            first, second = await call(client), await call(client)
            await client.close()
            return up.dropped, up.connections, first, second

    dropped, connections, first, second = run(go())
    assert dropped and connections == 2 and first == second == (200, b"ok")


def test_a_new_connection_closed_before_answering_is_not_retried():
    async def handler(up, reader, writer):
        await read_http_message(reader)  # never answers

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url)
            try:
                with pytest.raises(ConnectionFailed):
                    await call(client)
            finally:
                await client.close()
            return up.connections

    assert run(go()) == 1


def test_a_call_past_its_deadline_fails_and_closes_its_connection():
    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")  # then nothing
        await reader.read()  # returns when the client closes
        up.closed_by_peer.set()

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url, timeout_s=0.3)
            response = await client.request("POST", "/x", b"{}")
            with pytest.raises(TimeoutError):
                await response.read()
            response.release()
            await asyncio.wait_for(up.closed_by_peer.wait(), 5)
            await client.close()

    run(go())


def test_an_unreachable_upstream_fails_fast():
    async def go():
        client = HTTPClient("http://127.0.0.1:9/v1", connect_timeout_s=2)
        with pytest.raises(ConnectionFailed):
            await call(client)

    run(go())


def test_a_stream_left_midway_closes_the_connection_so_the_upstream_stops():
    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while not writer.is_closing():  # an upstream generating until its client goes away
            writer.write(b"6\r\ntoken \r\n")
            try:
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof():
                break
            await asyncio.sleep(0.01)
        up.closed_by_peer.set()

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url)
            response = await client.request("POST", "/x", b"{}")
            await anext(response.iter_any())
            response.release()  # not finished: the caller left
            await asyncio.wait_for(up.closed_by_peer.wait(), 5)
            await client.close()

    run(go())


def test_a_finished_stream_whose_terminator_comes_late_keeps_its_connection():
    async def handler(up, reader, writer):
        while True:
            await read_http_message(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url)
            for _ in range(3):
                response = await client.request("POST", "/x", b"{}")
                assert await anext(response.iter_any()) == b"data: [DONE]\n\n"
                response.release(finished=True)  # the reader has what it needs
                await asyncio.sleep(0.1)
            await client.close()
            return up.connections

    assert run(go()) == 1


def test_a_large_answer_read_slowly_arrives_intact():
    payload = bytes(range(256)) * 8192  # 2 MiB, above the pause threshold

    async def handler(up, reader, writer):
        await read_http_message(reader)
        writer.write(answer(payload))
        await writer.drain()
        await reader.read()

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url)
            response = await client.request("POST", "/x", b"{}")
            got = []
            async for piece in response.iter_any():
                got.append(piece)
                await asyncio.sleep(0.005)
            response.release()
            await client.close()
            return b"".join(got)

    assert run(go()) == payload


def test_concurrent_calls_stay_within_max_connections():
    async def handler(up, reader, writer):
        while True:
            await read_http_message(reader)
            await asyncio.sleep(0.05)
            writer.write(answer(b"ok"))

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url, max_connections=2)
            answers = await asyncio.gather(*[call(client) for _ in range(6)])
            await client.close()
            return up.max_open, answers

    max_open, answers = run(go())
    assert max_open == 2 and answers == [(200, b"ok")] * 6


def test_https_upstream_is_verified_against_the_given_authority():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def go():
        async with Upstream(echo_forever, ssl_context=server_context) as up:
            client = HTTPClient(up.url, ssl_context=trusting)
            ok = await call(client, b"secret")
            await client.close()
            stranger = HTTPClient(up.url)  # the system's authorities do not know this CA
            with pytest.raises(ConnectionFailed):
                await call(stranger)
            await stranger.close()
            return ok

    assert run(go()) == (200, b"POST /v1/chat/completions HTTP/1.1|secret")


def test_an_api_key_with_a_trailing_newline_is_sent_clean_and_a_line_break_inside_refused():
    async def handler(up, reader, writer):
        head, _ = await read_http_message(reader)
        writer.write(answer(head.split(b"\r\n\r\n")[0]))
        await reader.read()

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url, headers={"authorization": "Bearer sk-123\n"})
            _, head = await call(client)
            await client.close()
            return head

    assert b"authorization: Bearer sk-123\r\n" in run(go()) + b"\r\n"
    with pytest.raises(ValueError):
        HTTPClient("http://127.0.0.1:9/v1", headers={"authorization": "Bearer a\r\nx-evil: 1"})


def test_connections_left_idle_past_keepalive_after_a_burst_are_closed():
    async def handler(up, reader, writer):
        try:
            while True:
                await read_http_message(reader)
                await asyncio.sleep(0.05)
                writer.write(answer(b"ok"))
        finally:
            up.closed_by_peer_count = getattr(up, "closed_by_peer_count", 0) + 1

    async def go():
        async with Upstream(handler) as up:
            client = HTTPClient(up.url, keepalive_s=0.3)
            await asyncio.gather(*[call(client) for _ in range(4)])  # a burst: four connections
            loop = asyncio.get_running_loop()
            until = loop.time() + 0.6
            while loop.time() < until:  # then one call at a time: the newest connection serves them
                await call(client)
            await asyncio.sleep(0.1)
            closed = getattr(up, "closed_by_peer_count", 0)
            await client.close()
            return up.connections, closed

    connections, closed = run(go())
    assert connections == 4 and closed == 3  # the three the burst left behind, not the one in use
