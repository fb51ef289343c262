"""Gateway errors of tenancy (budgets, admin conflicts, the store being down) and the mapping of
store errors to them, so every tenancy failure reaches the client as OpenAI's error body."""

from __future__ import annotations

import logging

from gateway.http.errors import BadRequest, GatewayError, NotFound
from gateway.store import errors as store_errors

log = logging.getLogger("muxgate.tenancy")


class BudgetExceeded(GatewayError):
    """A budget (team or key) cannot cover the request's worst case: OpenAI's quota error."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class AlreadyExists(GatewayError):
    status = 409
    code = "conflict"


class StoreDown(GatewayError):
    """The store cannot be reached: fail closed (no unverified key, no unchecked budget)."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class _MappedStoreErrors:
    """The context manager of :func:`mapped_store_errors` (a class: it runs on every request's
    admission; stateless, so one instance serves every block)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            return False
        if issubclass(kind, store_errors.NotFound):
            raise NotFound(str(exc)) from None
        if issubclass(kind, store_errors.Conflict):
            raise AlreadyExists(str(exc)) from None
        if issubclass(kind, store_errors.InvalidInput):
            raise BadRequest(str(exc), code="invalid_request") from None
        if issubclass(kind, store_errors.StoreUnavailable):
            log.warning("store unavailable: %s", exc)
            raise StoreDown("The usage store is unavailable; try again shortly.", retry_after=1) from None
        return False


_MAPPED = _MappedStoreErrors()


def mapped_store_errors() -> _MappedStoreErrors:
    """Turn store errors raised inside the block into the matching GatewayError."""
    return _MAPPED
