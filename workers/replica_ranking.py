"""Which replicas a request for a model should go to, in ranked groups: the rule the pool's Ray
Serve request router applies (`workers/replica_router.py`), written without Ray so it is tested
with plain objects.

Each replica's stats are what its `record_routing_stats` reported (workers/serve_app.py). Serve
sends a request to the least loaded replica (fewest ongoing requests) of the first group that has
one below `max_ongoing_requests`, so a group's members share its requests, and a later group gets
any only when the whole earlier one is saturated.

Ranks: replicas holding the model, then ones loading it or just sent it (stats lag a little), then
the rest by warm host copy and most free memory. A session goes to its home replica first (its KV
prefix is cached there).

A hot model spreads: when every holder is hot for it (too many of its requests waiting there for
their first token, or it is paused there for another model's load, or its requests keep another
model's load waiting there) and another replica has room for it (its free bytes plus its idle
models' bytes cover the model's reservation: it loads without evicting anything busy), that
replica joins the holders' group, so it loads the model and takes part of the flood. At most one
such helper at a time per model: a replica already loading the model, or just sent it, is that
helper (affinity: the flood's requests keep going to the same one instead of touching every
replica); a further one is chosen only once the helper holds the model and is hot too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence, TypeVar

HOT_WAITING_REQUESTS = 4  # a holder is hot for a model when more of its requests than this wait there


class Replica(Protocol):
    """What ranking needs of a Serve RunningReplica."""

    @property
    def routing_stats(self) -> dict | None: ...

    @property
    def replica_id(self): ...  # .unique_id: str


R = TypeVar("R", bound=Replica)


@dataclass(frozen=True)
class SpreadPolicy:
    """When a hot model goes to a second replica (PoolOptions.spread_hot_models, hot_waiting_requests)."""

    enabled: bool = True
    hot_waiting: int = HOT_WAITING_REQUESTS


def stats_of(replica: Replica) -> dict:
    return replica.routing_stats or {}


def unique_id(replica: Replica) -> str:
    return replica.replica_id.unique_id


def is_hot(stats: dict, model: str, hot_waiting: int = HOT_WAITING_REQUESTS) -> bool:
    """The replica cannot keep up with `model` without making someone wait: more than `hot_waiting`
    of its requests wait there for their first token, or it is paused there (its new requests wait
    at its gate), or it has requests there while another model's load waits for room."""
    if model in stats.get("paused", ()):
        return True
    if stats.get("waiting", {}).get(model, 0) > hot_waiting:
        return True
    busy = stats.get("in_flight_by_model", {}).get(model, 0) > 0
    return busy and any(other != model for other in stats.get("blocked_loads", ()))


def has_room(stats: dict, model: str, reservation: int) -> bool:
    """The replica can load `model` now without evicting anything busy: its free bytes and its idle
    models' bytes cover the model's reservation, and no load of its own is waiting for room (nor
    pausing models for one)."""
    if not stats or reservation <= 0:
        return False
    room = stats.get("free_bytes", 0) + stats.get("idle_bytes", 0)
    return room >= reservation and not stats.get("blocked_loads") and not stats.get("paused")


def reservation_of(model: str, holders: Iterable[Replica]) -> int:
    """The model's reservation (weights + KV reserve) as its holders hold it; every replica serves
    the same specs with the same options, so it is what another replica needs free to load it."""
    return max((stats_of(r).get("reserved", {}).get(model, 0) for r in holders), default=0)


def rank_replicas(model: str, replicas: Sequence[R], recently_sent: Callable[[R], bool],
                  session_home: str | None = None, spread: SpreadPolicy = SpreadPolicy()) -> list[list[R]]:
    """The ranked groups for a request for `model` (empty groups left out).

    `recently_sent(r)`: this router sent `model` to `r` a moment ago (its stats may not show it yet).
    `session_home`: the replica id that last served the request's session, if any."""
    holders, warm, rest = [], [], []
    for replica in replicas:
        stats = stats_of(replica)
        if model in stats.get("resident", ()):
            holders.append(replica)
        elif model in stats.get("loading", ()) or recently_sent(replica):
            warm.append(replica)
        else:
            rest.append(replica)
    in_flight = lambda r: stats_of(r).get("in_flight", 0)  # noqa: E731
    holders.sort(key=in_flight)
    warm.sort(key=in_flight)
    # a replica with the model warm in host memory reloads it fastest; then the most free memory
    rest.sort(key=lambda r: (model not in stats_of(r).get("host_models", ()), -stats_of(r).get("free_bytes", 0)))
    home = next((r for r in holders if unique_id(r) == session_home), None) if session_home else None
    if home is not None:  # a session stays where its prefix is cached; it is not spread
        return _groups([home], [r for r in holders if r is not home], warm, rest)
    helper = spread_helper(model, holders, warm, rest, spread)
    if helper is not None:
        return _groups(holders + [helper], [r for r in warm if r is not helper], [r for r in rest if r is not helper])
    return _groups(holders, warm, rest)


def spread_helper(model: str, holders: list[R], warm: list[R], rest: list[R], spread: SpreadPolicy) -> R | None:
    """The replica that should share a hot model's flood with its holders, or None (see the module
    docstring). `warm` and `rest` come ranked as `rank_replicas` ranks them."""
    if not spread.enabled or not holders or not all(is_hot(stats_of(h), model, spread.hot_waiting) for h in holders):
        return None
    reservation = reservation_of(model, holders)
    for replica in warm:  # the helper already chosen: it is loading the model, or was just sent it
        stats = stats_of(replica)
        if model in stats.get("loading", ()) or has_room(stats, model, reservation):
            return replica
    roomy = [r for r in rest if has_room(stats_of(r), model, reservation)]
    # the least busy replica with room; a warm host copy, then the most free memory break ties
    return min(roomy, key=lambda r: stats_of(r).get("in_flight", 0), default=None)


def _groups(*groups: list[R]) -> list[list[R]]:
    return [g for g in groups if g]
