"""RoutingDecision: which model serves a request, and why (sent back in x-muxgate-* headers)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoutingDecision:
    model: str
    reason: str  # e.g. "explicit", "default_route"
    score: float | None = None  # P(large model needed) when a classifier was consulted
    fallbacks: tuple[str, ...] = field(default_factory=tuple)
    # speculative decoding opted in by the route: served model -> draft model, tokens per step
    drafts: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    draft_tokens: int = 0
    # the route's share multiplier in the pool's fair queue (2**priority), put on the GenerationRequest
    priority: int = 0
    # set when an adaptive router decided (policies/adaptive.py): the route's model pair and the
    # request's features, which an outcome of this request must carry (policies/outcome.py)
    pair: str | None = None
    features: object = field(default=None, compare=False, repr=False)

    def draft_for(self, model: str) -> str | None:
        return next((d for m, d in self.drafts if m == model), None)

    def headers(self) -> dict[str, str]:
        out = {
            "x-muxgate-model": self.model,
            "x-muxgate-route-reason": self.reason,
            "x-muxgate-route-score": "" if self.score is None else f"{self.score:.4f}",
        }
        draft = self.draft_for(self.model)
        if draft is not None:
            out["x-muxgate-draft-model"] = draft
        return out


@dataclass(frozen=True)
class RouteContext:
    """What a routing policy may look at: the team, the request's text, and whether it is an
    agent's step (tools the model may call) or asks for structured output (a response_format)."""

    team: str | None = None
    messages: list[dict] | None = None
    prompt: str | None = None
    session_id: str | None = None
    tools: bool = False
    structured: bool = False
    allowed: frozenset[str] | None = None  # the models the caller's key may use; None: any
