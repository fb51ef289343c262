"""Typed store errors. The gateway maps them to HTTP in its one error-mapping place."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by a store."""


class StoreUnavailable(StoreError):
    """The backend could not be reached, timed out or stayed locked; the call may be retried.

    Only this error is retried by :class:`gateway.store.buffer.LedgerBuffer`.
    """


class NotFound(StoreError):
    """The team or key named by the call does not exist."""


class Conflict(StoreError):
    """The call contradicts stored state (an id already taken, rotating a revoked key, ...)."""


class InvalidInput(StoreError, ValueError):
    """An argument failed validation (bad id, unknown budget period, negative cost, ...)."""
