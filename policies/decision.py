"""RoutingDecision: which model serves a request, and why (sent back in x-muxgate-* headers)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoutingDecision:
    model: str
    reason: str  # e.g. "explicit", "default_route"
    score: float | None = None  # P(large model needed) when a classifier was consulted
    fallbacks: tuple[str, ...] = field(default_factory=tuple)

    def headers(self) -> dict[str, str]:
        return {
            "x-muxgate-model": self.model,
            "x-muxgate-route-reason": self.reason,
            "x-muxgate-route-score": "" if self.score is None else f"{self.score:.4f}",
        }


@dataclass(frozen=True)
class RouteContext:
    """What a routing policy may look at: the team and the request's text."""

    team: str | None = None
    messages: list[dict] | None = None
    prompt: str | None = None
    session_id: str | None = None
