"""Per-minute rate limits as GCRA (the generic cell rate algorithm, a token bucket in one number).

State per limit is a single "theoretical arrival time" (TAT, ms). A request of weight ``amount``
(1 for RPM, tokens for TPM) advances the TAT by ``amount * 60000 / limit``; it is admitted when
the TAT stays within one window (60 s) of now. So a fresh limit admits a burst of ``limit`` per
minute and then refills continuously, and the retry-after is exact. The SQLite store uses these
functions inside its transaction; the Redis Lua script implements the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_MS = 60_000.0


@dataclass(frozen=True)
class RateDecision:
    """Outcome of :func:`take`. ``retry_after_s`` is None when the request can never fit."""

    allowed: bool
    new_tat_ms: float
    retry_after_s: float | None


def take(tat_ms: float | None, limit_per_minute: int, amount: int, now_ms: float) -> RateDecision:
    """Try to take ``amount`` units from a limit whose state is ``tat_ms`` (None = fresh)."""
    increment = amount * WINDOW_MS / limit_per_minute
    start = now_ms if tat_ms is None or tat_ms < now_ms else tat_ms
    new_tat = start + increment
    if new_tat - now_ms <= WINDOW_MS:
        return RateDecision(True, new_tat, 0.0)
    if increment > WINDOW_MS:
        return RateDecision(False, start, None)
    # Rounded up to the millisecond so that retrying after exactly this long succeeds.
    return RateDecision(False, start, math.ceil(new_tat - now_ms - WINDOW_MS) / 1000.0)


def refund(tat_ms: float | None, limit_per_minute: int, amount: int, now_ms: float) -> float | None:
    """Give back ``amount`` units (worst-case tokens not used); never earlier than now."""
    if tat_ms is None:
        return None
    return max(now_ms, tat_ms - amount * WINDOW_MS / limit_per_minute)
