"""Failed-authentication limiting: retrying a wrong key gets slow, fast, without locking anyone else out.

A sliding one-minute window per *subject*, in this process. The subjects of a request are the key
it presents (a digest of the whole presented secret: not its public id, which anyone who has seen a
listing could use to lock that key out) and, only when `server.trusted_proxies` says how to find
it, the client's address. The address is never taken on its own by default: behind an Ingress or a
load balancer every client shares the proxy's address, so twenty bad keys a minute from anyone
would lock out every team; and X-Forwarded-For is only believed when the peer that sent it is a
listed proxy (the client is then the rightmost address not in the list).

Keys are 32 random bytes, so this is not what keeps them safe; it keeps a client that hammers with
a revoked or mistyped key, or a scanner behind a known proxy, from burning CPU and filling logs.
Limits are per gateway process by design: a shared limiter would put the store on the path of
every bad guess.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Iterable

from gateway.http.errors import RateLimited
from gateway.tenancy.keys import key_digest


def _networks(entries: Iterable[str]) -> tuple:
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_subjects: int = 100_000,
                 clock=time.monotonic, trusted_proxies: Iterable[str] = ()):
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_subjects = max_subjects
        self.clock = clock
        self.trusted = _networks(trusted_proxies)
        self._failures: dict[str, deque[float]] = {}

    def _is_trusted(self, address) -> bool:
        return address is not None and any(address in net for net in self.trusted)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address when it can be trusted, which needs `trusted_proxies` set: a peer
        that is not a listed proxy is itself the client; for one that is, the rightmost
        X-Forwarded-For hop not in the list. None without listed proxies, or when a proxy sent no
        usable header."""
        if not self.trusted:
            return None
        peer_ip = _ip(peer or "")
        if peer_ip is None:
            return None
        if not self._is_trusted(peer_ip):
            return str(peer_ip)  # a direct client: its TCP address cannot be spoofed
        for hop in reversed((forwarded_for or "").split(",")):
            address = _ip(hop)
            if address is None:
                return None  # a malformed hop: believe nothing to its left
            if not self._is_trusted(address):
                return str(address)
        return None

    def subjects(self, token: str | None, peer: str | None = None,
                 forwarded_for: str | None = None) -> tuple[str, ...]:
        """What a request's failures count against: its presented key, and its trusted address."""
        found = []
        if token:
            found.append("key:" + key_digest(token)[:32])
        address = self.client_address(peer, forwarded_for)
        if address is not None:
            found.append("addr:" + address)
        return tuple(found)

    def request_subjects(self, request, token: str | None = None) -> tuple[str, ...]:
        """`subjects` of a Starlette request: `token`, else its Authorization header's key."""
        if token is None:
            authorization = request.headers.get("authorization") or ""
            token = authorization.partition(" ")[2].strip() or authorization
        peer = request.client.host if request.client else None
        return self.subjects(token, peer, request.headers.get("x-forwarded-for"))

    def _recent(self, subject: str) -> deque[float]:
        now = self.clock()
        q = self._failures.get(subject)
        if q is None:
            return deque()
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._failures[subject]
        return q

    def check(self, subjects: Iterable[str]) -> None:
        """Refuse a key or address that failed too often in the window, before looking the key up."""
        if not self.max_failures:
            return
        for subject in subjects:
            q = self._recent(subject)
            if len(q) >= self.max_failures:
                retry = max(1.0, self.window_s - (self.clock() - q[0]))
                what = "this API key" if subject.startswith("key:") else f"{subject[5:]}"
                raise RateLimited(f"Too many failed authentication attempts with {what}; retry in {retry:.0f}s.",
                                  code="too_many_auth_failures", retry_after=retry)

    def record_failure(self, subjects: Iterable[str]) -> None:
        for subject in subjects:
            if len(self._failures) >= self.max_subjects and subject not in self._failures:
                self._failures.pop(next(iter(self._failures)))  # bounded memory under a flood
            self._failures.setdefault(subject, deque()).append(self.clock())
