"""muxgate's autoscaling policy for the pool deployment: replicas follow the pool's own demand.

Ray Serve's controller calls the policy about every 0.1 s with an `AutoscalingContext`: the
replicas running and the current target, the requests queued at handles (not yet on a replica),
and, per running replica, the metrics each reports from `PoolReplica.record_autoscaling_stats`
(averaged over the deployment's `look_back_period_s`). The rule:

- demand = the requests on the replicas (waiting for their first token or generating) + those
  queued at handles; desired = ceil(demand / target_per_replica);
- residency pressure: when every running replica has models taking turns (paused for a load that
  does not fit beside them) or a load waiting for room, one more replica than are running;
- bounded by min/max replicas (Serve's capacity-adjusted bounds);
- a change is made only once it has been wanted for its delay (upscale_delay_s, downscale_delay_s,
  downscale_to_zero_delay_s for the last replica), kept in the policy state; leaving 0 replicas
  (requests queued at handles) and reaching min_replicas happen at once.

Serve wraps the policy with its own delays and scaling factors; the pool's application sets
those to 0 and 1, so the rule above is the whole decision. This module is pickled by value into
Serve's controller: it imports nothing but the standard library.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

REQUESTS_METRIC = "muxgate_requests"  # on the replica: waiting for their first token + generating
PRESSURE_METRIC = "muxgate_residency_pressure"  # 1: models take turns or a load waits for room
_WANTED = "muxgate_wanted"  # policy state: the replica count a pending change goes to
_SINCE = "muxgate_wanted_since"  # policy state: since when it has been wanted (controller clock)


@dataclass(frozen=True)
class ScalingKnobs:
    """The `pool.autoscaling` knobs the rule reads (the bounds come from Serve's context); their
    defaults and meaning are gateway/config.PoolAutoscalingConfig's."""

    target_per_replica: float
    upscale_delay_s: float
    downscale_delay_s: float
    downscale_to_zero_delay_s: float | None  # None: downscale_delay_s
    scale_on_residency_pressure: bool


def demand(ctx) -> float:
    """Requests the pool holds or is about to: on its replicas (their own count, else Serve's
    running count) plus those queued at handles."""
    queued = ctx.total_queued_requests or 0.0
    on_replicas = (ctx.aggregated_metrics or {}).get(REQUESTS_METRIC) or {}
    if ctx.running_replicas and all(r in on_replicas for r in ctx.running_replicas):
        return sum(on_replicas[r] for r in ctx.running_replicas) + queued
    # a replica that has not reported yet (just started): Serve's own count of running + queued
    return max(ctx.total_num_requests or 0.0, queued)


def under_pressure(ctx) -> bool:
    """Every running replica reported residency pressure in the look-back window."""
    pressure = (ctx.aggregated_metrics or {}).get(PRESSURE_METRIC) or {}
    return bool(ctx.running_replicas) and all(pressure.get(r, 0.0) > 0 for r in ctx.running_replicas)


def wanted_replicas(ctx, knobs: ScalingKnobs) -> int:
    """The replica count the demand asks for now, before delays, within the bounds."""
    want = math.ceil(demand(ctx) / knobs.target_per_replica - 1e-9)
    if knobs.scale_on_residency_pressure and under_pressure(ctx):
        want = max(want, ctx.current_num_replicas + 1)
    return min(max(want, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)


def decide(ctx, knobs: ScalingKnobs) -> tuple[int, dict]:
    """(replicas, policy state): the pure rule, on Serve's AutoscalingContext (or a fake one)."""
    target = ctx.target_num_replicas
    state = {k: v for k, v in (ctx.policy_state or {}).items() if k not in (_WANTED, _SINCE)}
    want = wanted_replicas(ctx, knobs)
    if want == target:
        return target, state
    if target < ctx.capacity_adjusted_min_replicas or (target == 0 and want > 0):
        return want, state  # below the floor, or requests waiting with no replica: no delay
    if want > target:
        delay = knobs.upscale_delay_s
    elif want == 0 and target == 1:
        delay = knobs.downscale_delay_s if knobs.downscale_to_zero_delay_s is None else knobs.downscale_to_zero_delay_s
    else:
        want, delay = max(want, 1), knobs.downscale_delay_s  # the last replica goes on its own delay
    now = ctx.current_time if ctx.current_time is not None else time.time()
    previous = (ctx.policy_state or {}).get(_WANTED)
    same_way = previous is not None and (previous > target) == (want > target)
    since = ctx.policy_state[_SINCE] if same_way else now  # the clock runs while the direction holds
    if now - since + 1e-6 >= delay:
        return want, state
    return target, {**state, _WANTED: want, _SINCE: since}


class PoolAutoscalingPolicy:
    """The policy as Serve instantiates it: `AutoscalingPolicy(policy_function=
    "workers.autoscaling:PoolAutoscalingPolicy", policy_kwargs=<ScalingKnobs fields>)`."""

    def __init__(self, **knobs):
        self.knobs = ScalingKnobs(**knobs)

    def __call__(self, ctx) -> tuple[int, dict]:
        return decide(ctx, self.knobs)
