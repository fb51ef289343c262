"""Model-aware replica routing, as a Ray Serve request router (Serve's own extension point).

Each replica reports which models it holds, how many of each model's requests wait there, and its
free device bytes (`record_routing_stats`, collected by Serve's controller). The ranking itself
(holders first, a session's home first, a hot model spread to a second replica with room) is
`workers/replica_ranking.py`; this class keeps what the router remembers between requests: where
it just sent each model (stats lag a little) and each session's home replica.
"""

from __future__ import annotations

import time
from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from workers.replica_ranking import HOT_WAITING_REQUESTS, SpreadPolicy, rank_replicas

AFFINITY_S = 30.0  # how long "we routed M to R" counts as R probably holding M
SESSION_AFFINITY_S = AFFINITY_S * 10  # how long a session's prefix counts as cached where it last ran


def session_of(pending: Optional[PendingRequest]) -> str | None:
    """The agent session (x-session-id) of a generate call: its KV prefix lives where it last ran."""
    if pending is None or len(pending.args) < 2:
        return None
    return getattr(pending.args[1], "session_id", None)


def requested_model(pending: Optional[PendingRequest]) -> str | None:
    if pending is None or not pending.args:
        return None
    model = pending.args[0]
    return model if isinstance(model, str) else None


class ModelAwareRouter(RequestRouter):
    """Serve's default matching: the replica chosen for a request goes to that request. (FIFOMixin
    would hand it to the oldest pending request whatever its model, so under concurrent traffic a
    cold model's choice of replica carried a hot model's request there, and the hot model's too.)"""

    def initialize_state(self, spread_hot_models: bool = True, hot_waiting_requests: int = HOT_WAITING_REQUESTS,
                         **kwargs):
        """Serve passes the deployment's `request_router_kwargs` (build_pool_app: from PoolOptions)."""
        self._spread = SpreadPolicy(enabled=spread_hot_models, hot_waiting=hot_waiting_requests)
        self._recent: dict[tuple[str, str], float] = {}  # (model, replica id) -> when we routed there
        self._sessions: dict[str, tuple[str, float]] = {}  # session -> (replica id, when)

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        model = requested_model(pending_request)
        if model is None or not candidate_replicas:
            return [candidate_replicas]
        now = time.monotonic()
        session = session_of(pending_request)
        home = None
        if session and session in self._sessions:
            replica_id, when = self._sessions[session]
            home = replica_id if now - when < SESSION_AFFINITY_S else None

        def recently_sent(replica: RunningReplica) -> bool:
            return now - self._recent.get((model, replica.replica_id.unique_id), -1e9) < AFFINITY_S

        return rank_replicas(model, candidate_replicas, recently_sent, home, self._spread)

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        model = requested_model(pending_request)
        now = time.monotonic()
        if model is not None:
            self._recent[(model, replica_id.unique_id)] = now
        session = session_of(pending_request)
        if session:
            self._sessions[session] = (replica_id.unique_id, now)
            if len(self._sessions) > 100_000:  # bounded: forget the oldest sessions
                for key in sorted(self._sessions, key=lambda k: self._sessions[k][1])[:10_000]:
                    del self._sessions[key]
