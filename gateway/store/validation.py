"""Argument checks shared by both stores, so both reject exactly the same input.

Ids end up inside Redis key names and model names inside rollup fields, so their alphabets are
restricted here once instead of escaped in every backend.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from datetime import datetime, timezone

from gateway.store.errors import InvalidInput
from gateway.store.money import usd_to_micros
from gateway.store.periods import BUDGET_PERIODS

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SCOPE_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_MAX_NAME = 200
_MAX_MODEL = 256


def check_id(value: str, what: str) -> str:
    """Team ids: 1-64 chars of letters, digits, '_', '.', '-', starting alphanumeric."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInput(f"invalid {what}: {value!r}")
    return value


def check_request_id(value: str) -> str:
    """Request ids: 1-128 chars of letters, digits, '_', '.', ':', '-'."""
    if not isinstance(value, str) or not _REQUEST_ID_RE.match(value):
        raise InvalidInput(f"invalid request id: {value!r}")
    return value


def check_name(value: str) -> str:
    """Human-readable names: any printable text up to 200 characters."""
    if not isinstance(value, str) or len(value) > _MAX_NAME or not value.isprintable():
        raise InvalidInput(f"invalid name: {value!r}")
    return value


def check_model(value: str) -> str:
    """Model names: non-empty printable text without whitespace, up to 256 characters."""
    if not isinstance(value, str) or not _valid_model(value):
        raise InvalidInput(f"invalid model name: {value!r}")
    return value


@functools.lru_cache(maxsize=1024)  # a gateway's few model names are checked on every request
def _valid_model(value: str) -> bool:
    return bool(value) and len(value) <= _MAX_MODEL and value.isprintable() and not any(
        c.isspace() for c in value)


def check_models(values: Iterable[str] | None) -> tuple[str, ...]:
    """A model allow-list, normalised to a sorted tuple; empty means every model."""
    if values is None:
        return ()
    if isinstance(values, str):
        raise InvalidInput("allowed_models must be a list of names, not a string")
    return tuple(sorted({check_model(v) for v in values}))


def check_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Key scopes such as 'inference' or 'admin', normalised to a sorted tuple."""
    if isinstance(values, str):
        raise InvalidInput("scopes must be a list of names, not a string")
    scopes = tuple(sorted(set(values)))
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_RE.match(scope):
            raise InvalidInput(f"invalid scope: {scope!r}")
    return scopes


def check_period(value: str) -> str:
    """A budget period: 'daily', 'monthly' or 'total'."""
    if value not in BUDGET_PERIODS:
        raise InvalidInput(f"budget_period must be one of {BUDGET_PERIODS}, got {value!r}")
    return value


def check_limit(value: int | None, what: str) -> int | None:
    """A rate limit: None (unlimited) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be None or an integer >= 1, got {value!r}")
    return value


def check_share(value: float) -> float:
    """A team's fair-share weight: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise InvalidInput(f"share must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(value: int, what: str) -> int:
    """A positive integer such as a page size."""
    if value is None:
        raise InvalidInput(f"{what} must be an integer >= 1, got None")
    return check_limit(value, what)


def check_budget_micros(value) -> int | None:
    """A budget in dollars (None = unlimited) -> micro-dollars."""
    return None if value is None else usd_to_micros(value)


def check_tokens(value: int) -> int:
    """A token count: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"token count must be an integer >= 0, got {value!r}")
    return value


def check_constrained(value: str | None) -> str | None:
    """What constrained an answer: None or a short lower-case name such as 'json_schema'."""
    if value is not None and (not isinstance(value, str) or not _SCOPE_RE.match(value)):
        raise InvalidInput(f"invalid constrained: {value!r}")
    return value


def check_seconds(value: float, what: str) -> float:
    """A non-negative finite duration in seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise InvalidInput(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def to_epoch(value: datetime | float | int) -> float:
    """Accept an aware datetime (naive ones are taken as UTC) or epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"not a time: {value!r}")
    return float(value)
