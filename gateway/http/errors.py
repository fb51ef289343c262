"""Gateway errors and the one place that maps any error to HTTP + OpenAI's error body."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from workers.types import PoolError

log = logging.getLogger("muxgate.errors")


class GatewayError(Exception):
    """An error the client should see as-is; subclasses fix the status and OpenAI type/code."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class ModelNotAvailable(GatewayError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamRateLimited(RateLimited):
    """A remote upstream answered 429: its limit, not the caller's, so worth a fallback."""


class BackendFailed(GatewayError):
    status = 502
    type = "server_error"
    code = "backend_error"


class BackendUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "backend_unavailable"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(exc: BaseException, request_id: str) -> tuple[int, dict, dict]:
    """(status, OpenAI error body, extra headers) for any exception."""
    if isinstance(exc, GatewayError):
        status, body = exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
        headers, retry = dict(exc.headers), exc.retry_after
    elif isinstance(exc, PoolError):
        type_ = "invalid_request_error" if exc.status < 500 else "server_error"
        # a pool error may name the request field it is about (details["param"], e.g. a schema its
        # grammar compiler could not handle: "response_format")
        param = exc.details.get("param") or (
            "model" if exc.status == 404 else ("messages" if exc.code == "context_length_exceeded" else None))
        status, body = exc.status, error_body(exc.message, type_, param, exc.code)
        headers, retry = {}, exc.retry_after
    else:
        log.error("unhandled error in request %s", request_id, exc_info=exc)
        status = 500
        body = error_body(f"Internal server error (request id {request_id}).", "server_error", None, "internal_error")
        headers, retry = {}, None
    if status >= 500 and request_id not in body["error"]["message"]:
        body["error"]["message"] += f" (request id {request_id})"
    if retry is not None:
        headers["retry-after"] = str(max(1, int(round(retry))))
    return status, body, headers


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    status, body, headers = describe(exc, request_id)
    return JSONResponse(body, status_code=status, headers=headers)
