"""Abusive connections: a client that sends its body a byte at a time is cut off within the
body timeout, hundreds of idle connections do not stop a normal request, and failed key guesses
from one address get 429 after `server.auth_failures_per_minute`."""

from __future__ import annotations

import json
import socket
import time

import httpx
from reliability_kit import AUTH_FAILURES_PER_MINUTE, BODY_TIMEOUT_S

from loadtests.chaos_client import chat

CHAT = "/v1/chat/completions"


def _assert_openai_error(body: dict) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def _read_response(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """What the server sent until it closed the connection, sent a whole response, or `deadline`."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += data
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return received, False
    return received, False


def test_a_body_sent_a_byte_at_a_time_is_cut_off_within_the_body_timeout(sqlite_gateway):
    body = json.dumps(chat(max_tokens=2)).encode()
    sock = socket.create_connection(("127.0.0.1", sqlite_gateway.port))
    try:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {sqlite_gateway.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        began = time.monotonic()
        deadline = began + BODY_TIMEOUT_S + 5  # the whole body would take len(body) * 0.25 s (~30 s)
        sent, received, closed = 0, b"", False
        while time.monotonic() < deadline and sent < len(body):
            try:
                sock.sendall(body[sent:sent + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            received, closed = _read_response(sock, time.monotonic() + 0.25)
            if received or closed:
                break
        if not (received or closed):
            received, closed = _read_response(sock, deadline)
        elapsed = time.monotonic() - began
    finally:
        sock.close()
    assert sent < len(body), "the server waited for the whole trickled body"
    assert received or closed, f"no answer and no close within {BODY_TIMEOUT_S + 5:.0f}s"
    assert elapsed <= BODY_TIMEOUT_S + 5
    if received:  # a 408 with OpenAI's error body (a plain close is also a cut-off)
        head, _, payload = received.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"408", head
        _assert_openai_error(json.loads(payload))


def test_hundreds_of_idle_connections_do_not_block_a_request(sqlite_gateway):
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", sqlite_gateway.port), timeout=5))
        headers = {"authorization": f"Bearer {sqlite_gateway.key}"}
        resp = httpx.post(sqlite_gateway.base_url + CHAT, json=chat(max_tokens=2), headers=headers, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] is not None
        with httpx.stream("POST", sqlite_gateway.base_url + CHAT, json=chat(max_tokens=2, stream=True),
                          headers=headers, timeout=30) as stream:
            assert stream.status_code == 200
            assert "data: [DONE]" in stream.read().decode()
    finally:
        for sock in idle:
            sock.close()


def test_failed_auth_from_one_address_gets_429_after_the_limit(sqlite_gateway):
    """A scanner trying a new key each time, from a direct client's address (the config lists its
    proxies, so a peer that is not one is a client whose address counts)."""
    url = sqlite_gateway.base_url + CHAT
    # The attacker is another loopback address, so this test's lockout is its own.
    attacker = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    try:
        guesses = [attacker.post(url, json=chat(), headers={"authorization": f"Bearer mg-{i:016x}_guess{i:038d}"})
                   for i in range(AUTH_FAILURES_PER_MINUTE + 3)]
    finally:
        attacker.close()
    statuses = [r.status_code for r in guesses]
    assert statuses[:AUTH_FAILURES_PER_MINUTE] == [401] * AUTH_FAILURES_PER_MINUTE, statuses
    for resp in guesses[AUTH_FAILURES_PER_MINUTE:]:
        assert resp.status_code == 429, statuses
        assert int(resp.headers["retry-after"]) >= 1
        _assert_openai_error(resp.json())
    # another address is not locked out
    ok = httpx.post(url, json=chat(max_tokens=2), headers={"authorization": f"Bearer {sqlite_gateway.key}"}, timeout=30)
    assert ok.status_code == 200, ok.text
