"""Failed-authentication limiting per client address: guessing keys gets slow, fast.

A sliding one-minute window per address, in this process. Keys are 32 random bytes, so this is
not what keeps them safe; it keeps a scanner from burning CPU and filling logs. Limits are per
gateway process by design: a shared limiter would put the store on the path of every bad guess.
"""

from __future__ import annotations

import time
from collections import deque

from gateway.errors import RateLimited


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_addresses: int = 100_000,
                 clock=time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        now = self.clock()
        q = self._failures.get(address)
        if q is None:
            return deque()
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._failures[address]
        return q

    def check(self, address: str) -> None:
        """Refuse an address that failed too often in the window, before looking at its key."""
        q = self._recent(address)
        if self.max_failures and len(q) >= self.max_failures:
            retry = max(1.0, self.window_s - (self.clock() - q[0]))
            raise RateLimited(f"Too many failed authentication attempts from {address}; retry in {retry:.0f}s.",
                              code="too_many_auth_failures", retry_after=retry)

    def record_failure(self, address: str) -> None:
        if len(self._failures) >= self.max_addresses and address not in self._failures:
            self._failures.pop(next(iter(self._failures)))  # bounded memory under a spoofed flood
        self._failures.setdefault(address, deque()).append(self.clock())
