"""POST /v1/feedback: a team scores the answer to one of its own `auto` requests.

    {"request_id": "chatcmpl-…" or the x-request-id, "score": 0.8 | "up" | "down" | true | false}

The score labels the tier that answered (an Outcome with source "feedback" and only that tier's
score) and is fed to the router's learner. Only the team that made the request may score it:
another team's request id is answered 404 like an unknown one (ids cannot be probed). One score
per request is kept: a second replaces the first in the store (the running router has learnt
from both; `muxgate router fit --from-store` uses the kept one).
"""

from __future__ import annotations

import math
import re
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.tenancy.callers import INFERENCE_SCOPE, Admin
from gateway.http.completions import read_body
from gateway.http.errors import BadRequest, Forbidden, NotFound
from gateway.http.openai_api import parse_json
from gateway.learning.routed_record import RoutedRecorder, observe
from gateway.store import Store
from gateway.tenancy.errors import mapped_store_errors
from policies.outcome import Outcome

FEEDBACK_SCOPE = "feedback"
MAX_BODY_BYTES = 4096
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_THUMBS = {"up": 1.0, "down": 0.0}


def parse_feedback(body: dict) -> tuple[str, float]:
    """(request id, score in [0, 1]); 400 naming the field for anything else."""
    extra = sorted(set(body) - {"request_id", "score"})
    if extra:
        raise BadRequest(f"Unrecognized request argument supplied: {extra[0]}", param=extra[0], code="invalid_request")
    rid = body.get("request_id")
    if rid is None:
        raise BadRequest("Missing required parameter: 'request_id'.", param="request_id", code="invalid_request")
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise BadRequest("Invalid value for 'request_id': give the response's id or its x-request-id.",
                         param="request_id", code="invalid_request")
    for prefix in ("chatcmpl-", "cmpl-"):  # the response body's id is the request id with a prefix
        rid = rid.removeprefix(prefix)
    if "score" not in body:
        raise BadRequest("Missing required parameter: 'score'.", param="score", code="invalid_request")
    return rid, _score(body["score"])


def _score(value) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str) and value.lower() in _THUMBS:
        return _THUMBS[value.lower()]
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    raise BadRequest("Invalid value for 'score': a number in [0, 1], \"up\" / \"down\", or true / false.",
                     param="score", code="invalid_request")


class FeedbackService:
    def __init__(self, store: Store, router, recorder: RoutedRecorder, callers, read_timeout_s: float):
        self.store = store
        self.router = router
        self.recorder = recorder
        self.callers = callers
        self.read_timeout_s = read_timeout_s
        self.accepted = 0

    async def handle(self, request: Request) -> Response:
        caller = await self.callers.caller(request.headers.get("authorization"))
        if isinstance(caller, Admin):
            raise Forbidden("Feedback comes from the team that made the request; use the team's key.")
        if not caller.scopes & {INFERENCE_SCOPE, FEEDBACK_SCOPE}:
            raise Forbidden(f"This API key lacks the '{INFERENCE_SCOPE}' or '{FEEDBACK_SCOPE}' scope.")
        body = parse_json(await read_body(request, MAX_BODY_BYTES, self.read_timeout_s))
        rid, score = parse_feedback(body)
        await self.recorder.wait_for(rid)  # answered by this gateway a moment ago: its record is on its way
        with mapped_store_errors():
            routed = await self.store.routed_request(caller.team_id, rid)
            if routed is None:
                raise NotFound(f"No `model: auto` request with id '{rid}' for this team.", param="request_id")
            outcome = Outcome(rid, routed.team_id, routed.pair, routed.routed,
                              score if routed.routed == "small" else None,
                              score if routed.routed == "large" else None,
                              "feedback", routed.features, time.time())
            await self.store.record_outcome(outcome)
        observe(self.router, outcome)
        self.accepted += 1
        return JSONResponse({"object": "feedback", "request_id": rid, "score": score, "tier": routed.routed,
                             "model": routed.model})
