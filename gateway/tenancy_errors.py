"""Gateway errors of tenancy (budgets, admin conflicts, the store being down) and the mapping of
store errors to them, so every tenancy failure reaches the client as OpenAI's error body."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from gateway.errors import BadRequest, GatewayError, NotFound
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


@contextlib.contextmanager
def mapped_store_errors() -> Iterator[None]:
    """Turn store errors raised inside the block into the matching GatewayError."""
    try:
        yield
    except store_errors.NotFound as exc:
        raise NotFound(str(exc)) from None
    except store_errors.Conflict as exc:
        raise AlreadyExists(str(exc)) from None
    except store_errors.InvalidInput as exc:
        raise BadRequest(str(exc), code="invalid_request") from None
    except store_errors.StoreUnavailable as exc:
        log.warning("store unavailable: %s", exc)
        raise StoreDown("The usage store is unavailable; try again shortly.", retry_after=1) from None
