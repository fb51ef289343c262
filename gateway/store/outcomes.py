"""What the store keeps for routing to learn from: each `auto`-routed request (its features, the
model pair and the tier that answered; its messages and answers only for a team that opted in
with `store_prompts: true`), the outcomes labelling those requests (policies.outcome.Outcome, from
feedback and shadow evaluation), and the router's learned state.

Backend-independent: the records, their validation and their JSON form (Redis stores documents;
SQLite columns). The backends are gateway/store/sqlite_outcomes.py and redis_outcomes.py.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from policies.outcome import PAIR_SEPARATOR, ROUTED, Outcome
from gateway.store.errors import InvalidInput
from gateway.store.validation import check_id, check_model, check_request_id


@dataclass(frozen=True)
class RoutedRequest:
    """One `auto` request as the router saw it, recorded when it settles."""

    request_id: str
    team_id: str
    time: float  # epoch seconds of the request's arrival
    pair: str  # "<small>-><large>": the route's two models
    routed: str  # "small" | "large": the tier that answered
    model: str  # the model that answered
    features: bytes  # policies.outcome.encode_features of the classifier's RequestFeatures
    messages: list[dict] | None = None  # the prompt (chat messages); only with store_prompts
    answer: str | None = None  # the routed model's answer; only with store_prompts
    other_answer: str | None = None  # the other tier's answer from a shadow evaluation; same condition

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        check_id(self.team_id, "team id")
        check_model(self.model)
        if self.routed not in ROUTED:
            raise InvalidInput(f"routed must be one of {ROUTED}, got {self.routed!r}")
        if PAIR_SEPARATOR not in self.pair:
            raise InvalidInput(f"pair must look like '<small>{PAIR_SEPARATOR}<large>', got {self.pair!r}")
        if not isinstance(self.features, bytes) or not self.features:
            raise InvalidInput("features must be non-empty bytes")
        object.__setattr__(self, "time", float(self.time))

    @property
    def large_answer(self) -> str | None:
        """The large tier's answer, whichever way it was obtained (routed, or shadowed)."""
        return self.answer if self.routed == "large" else self.other_answer

    def to_json_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _ROUTED_FIELDS}
        data["features"] = base64.b64encode(self.features).decode("ascii")
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> RoutedRequest:
        return cls(**{**data, "features": base64.b64decode(data["features"])})


_ROUTED_FIELDS = ("request_id", "team_id", "time", "pair", "routed", "model", "features", "messages",
                  "answer", "other_answer")


def check_outcome(outcome: Outcome) -> Outcome:
    """The store's own checks on top of Outcome's (ids it can index by)."""
    if not isinstance(outcome, Outcome):
        raise InvalidInput("expected a policies.outcome.Outcome")
    check_request_id(outcome.request_id)
    check_id(outcome.team, "team id")
    return outcome


def outcome_to_json(outcome: Outcome) -> str:
    return json.dumps({"request_id": outcome.request_id, "team": outcome.team, "pair": outcome.pair,
                       "routed": outcome.routed, "small_score": outcome.small_score,
                       "large_score": outcome.large_score, "source": outcome.source,
                       "features": base64.b64encode(outcome.features).decode("ascii"),
                       "created_at": outcome.created_at})


def outcome_from_json(text: str) -> Outcome:
    data = json.loads(text)
    return Outcome(**{**data, "features": base64.b64decode(data["features"])})


def check_state(state: dict) -> str:
    """The router's state as JSON text; InvalidInput unless it is a JSON object."""
    if not isinstance(state, dict):
        raise InvalidInput("router state must be a JSON object")
    try:
        return json.dumps(state, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"router state is not JSON: {exc}") from None
