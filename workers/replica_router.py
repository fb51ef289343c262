"""Model-aware replica routing, as a Ray Serve request router (Serve's own extension point).

Each replica reports which models it holds and its free device bytes (`record_routing_stats`,
collected by Serve's controller). A request for model M goes first to replicas that hold M
(least loaded first), then to replicas loading it or that we just sent M to (stats lag a little),
then to the rest by most free memory. Hot models may be resident on several replicas: when the
holders are saturated Serve falls through to the next rank, which loads M there.
"""

from __future__ import annotations

import time
from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

AFFINITY_S = 30.0  # how long "we routed M to R" counts as R probably holding M


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


class ModelAwareRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs):
        self._recent: dict[tuple[str, str], float] = {}  # (model, replica id) -> when we routed there
        self._sessions: dict[str, tuple[str, float]] = {}  # session -> (replica id, when)

    def _stats(self, replica: RunningReplica) -> dict:
        return replica.routing_stats or {}

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        model = requested_model(pending_request)
        if model is None or not candidate_replicas:
            return [candidate_replicas]
        now = time.monotonic()
        holders, warm, rest = [], [], []
        for replica in candidate_replicas:
            stats = self._stats(replica)
            recent = now - self._recent.get((model, replica.replica_id.unique_id), -1e9) < AFFINITY_S
            if model in stats.get("resident", ()):
                holders.append(replica)
            elif model in stats.get("loading", ()) or recent:
                warm.append(replica)
            else:
                rest.append(replica)
        in_flight = lambda r: self._stats(r).get("in_flight", 0)  # noqa: E731
        holders.sort(key=in_flight)
        warm.sort(key=in_flight)
        session = session_of(pending_request)
        if session and session in self._sessions:  # the replica with this session's prefix goes first
            home, when = self._sessions[session]
            if now - when < AFFINITY_S * 10:
                holders.sort(key=lambda r: r.replica_id.unique_id != home)
        # a replica with the model warm in host memory reloads it fastest; then the most free memory
        rest.sort(key=lambda r: (model not in self._stats(r).get("host_models", ()),
                                 -self._stats(r).get("free_bytes", 0)))
        return [group for group in (holders, warm, rest) if group]

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
