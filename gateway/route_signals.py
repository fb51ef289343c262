"""What the routing policy may know about live state: a team's budget position (from the store,
cached briefly) and each model's queue depth in the pool (from the polled pool stats)."""

from __future__ import annotations

import time


class GatewaySignals:
    def __init__(self, store=None, pool_metrics=None, ttl_s: float = 1.0):
        self.store = store
        self.pool_metrics = pool_metrics
        self.ttl_s = ttl_s
        self._budget: dict[str, tuple[float, float | None]] = {}

    async def budget_used_fraction(self, team: str) -> float | None:
        """Spent + reserved over budget for the current period; None when unlimited or unknown."""
        if self.store is None:
            return None
        cached = self._budget.get(team)
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        try:
            spend = await self.store.spend(team)
            value = (None if not spend.budget_usd else
                     float((spend.spent_usd + spend.reserved_usd) / spend.budget_usd))
        except Exception:  # no signal is better than a failed request: route on the classifier alone
            value = None
        self._budget[team] = (time.monotonic(), value)
        return value

    def queue_depth(self, model: str) -> int:
        """Requests on `model` not yet finished, across replicas (in flight + waiting for a load)."""
        if self.pool_metrics is None:
            return 0
        depth = 0
        for replica in self.pool_metrics.snapshot:
            depth += replica.get("in_flight", {}).get(model, 0) + replica.get("queue_depth", {}).get(model, 0)
        return depth
