"""Budget periods and hour buckets, all in UTC.

A budget period is identified by a key (``d2025-01-31``, ``m2025-01``, ``total``) under which
spend is counted; a new day or month simply starts a new key, so rollover needs no job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

BUDGET_PERIODS = ("daily", "monthly", "total")
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class PeriodWindow:
    """The budget period that contains a moment: its key and bounds (end None for 'total')."""

    key: str
    start: float
    end: float | None


def period_window(period: str, now: float) -> PeriodWindow:
    """Return the window of ``period`` ("daily" | "monthly" | "total") containing ``now``."""
    if period == "total":
        return TOTAL
    # Every window starts at a UTC midnight, so the day decides it (cached: two per request).
    return _window_of_day(period, int(now // 86400))


@lru_cache(maxsize=64)
def _window_of_day(period: str, day: int) -> PeriodWindow:
    moment = datetime.fromtimestamp(day * 86400, tz=timezone.utc)
    if period == "daily":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = datetime.fromtimestamp(start.timestamp() + 86400, tz=timezone.utc)
        return PeriodWindow(f"d{start:%Y-%m-%d}", start.timestamp(), end.timestamp())
    if period == "monthly":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start.month == 12:
            end = start.replace(year=start.year + 1, month=1)
        else:
            end = start.replace(month=start.month + 1)
        return PeriodWindow(f"m{start:%Y-%m}", start.timestamp(), end.timestamp())
    raise ValueError(f"unknown budget period {period!r}")


TOTAL = PeriodWindow("total", 0.0, None)


def hour_bucket(t: float) -> int:
    """Hours since the epoch; the key of an hourly rollup."""
    return int(t // SECONDS_PER_HOUR)


def hour_label(bucket: int) -> str:
    """ISO label of an hour bucket, e.g. '2025-01-31T13:00:00Z'."""
    return datetime.fromtimestamp(bucket * SECONDS_PER_HOUR, tz=timezone.utc).strftime(
        "%Y-%m-%dT%H:00:00Z")


def day_label(bucket: int) -> str:
    """UTC date of an hour bucket, e.g. '2025-01-31'."""
    return datetime.fromtimestamp(bucket * SECONDS_PER_HOUR, tz=timezone.utc).strftime("%Y-%m-%d")
