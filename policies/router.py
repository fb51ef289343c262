"""Turns the `model` a client asked for into a RoutingDecision."""

from __future__ import annotations

from policies.decision import RouteContext, RoutingDecision
from policies.schema import RoutingConfig

AUTO = "auto"


class Router:
    def __init__(self, config: RoutingConfig, models: list[str]):
        self.config = config
        self.models = set(models)

    async def decide(self, requested: str, context: RouteContext | None = None) -> RoutingDecision | None:
        """None when `requested` is neither `auto` nor a served model."""
        if requested == AUTO:
            return RoutingDecision(self.config.default_model, "default_route")
        if requested in self.models:
            return RoutingDecision(requested, "explicit")
        return None
