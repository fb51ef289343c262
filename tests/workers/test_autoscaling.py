"""The pool's autoscaling rule (workers/autoscaling.py) on a fake Serve context: no Ray."""

from dataclasses import dataclass, field, replace

from workers.autoscaling import PRESSURE_METRIC, REQUESTS_METRIC, ScalingKnobs, decide

KNOBS = ScalingKnobs(target_per_replica=4, upscale_delay_s=10, downscale_delay_s=60, downscale_to_zero_delay_s=30,
                     scale_on_residency_pressure=True)


@dataclass
class FakeContext:
    """The fields of ray.serve.config.AutoscalingContext the rule reads."""

    target_num_replicas: int
    requests: dict = field(default_factory=dict)  # replica -> requests it reports
    pressure: dict = field(default_factory=dict)  # replica -> residency pressure it reports
    total_queued_requests: float = 0.0  # at handles, not on a replica yet
    total_num_requests: float = 0.0  # Serve's own count: running on replicas + queued at handles
    running: list | None = None  # default: the replicas that report
    capacity_adjusted_min_replicas: int = 0
    capacity_adjusted_max_replicas: int = 8
    policy_state: dict = field(default_factory=dict)
    current_time: float = 1000.0

    @property
    def running_replicas(self):
        return list(self.requests) if self.running is None else self.running

    @property
    def current_num_replicas(self):
        return len(self.running_replicas)

    @property
    def aggregated_metrics(self):
        return {REQUESTS_METRIC: self.requests, PRESSURE_METRIC: self.pressure}


def run(ctx, knobs=KNOBS, at=()):
    """Decide at each time in `at` (the state carried over, as Serve does); the last decision."""
    decision = None
    for t in at or (ctx.current_time,):
        ctx.current_time = t
        decision, ctx.policy_state = decide(ctx, knobs)
    return decision


def test_requests_beyond_the_target_add_replicas_once_wanted_for_the_upscale_delay():
    ctx = FakeContext(1, requests={"r1": 9})  # 9 requests / 4 per replica: 3 replicas
    assert run(ctx, at=[1000, 1005]) == 1  # wanted for 5 s of 10
    assert run(ctx, at=[1010]) == 3


def test_requests_queued_at_handles_count_as_demand():
    ctx = FakeContext(1, requests={"r1": 2}, total_queued_requests=6)
    assert run(ctx, at=[1000, 1010]) == 2


def test_a_dip_restarts_the_upscale_clock():
    ctx = FakeContext(1, requests={"r1": 9})
    run(ctx, at=[1000, 1008])
    ctx.requests = {"r1": 3}  # back within the target: the pending change is dropped
    assert run(ctx, at=[1009]) == 1
    ctx.requests = {"r1": 9}
    assert run(ctx, at=[1012]) == 1
    assert run(ctx, at=[1022]) == 3


def test_fewer_requests_remove_replicas_after_the_downscale_delay():
    ctx = FakeContext(3, requests={"r1": 1, "r2": 1, "r3": 0})
    assert run(ctx, at=[1000, 1059]) == 3
    assert run(ctx, at=[1060]) == 1


def test_the_last_replica_stops_after_the_to_zero_delay_only_from_one():
    ctx = FakeContext(2, requests={"r1": 0, "r2": 0})
    assert run(ctx, at=[1000, 1060]) == 1  # 2 -> 1 on the downscale delay, never 2 -> 0 at once
    ctx.target_num_replicas, ctx.requests = 1, {"r1": 0}
    assert run(ctx, at=[1061, 1090]) == 1
    assert run(ctx, at=[1091]) == 0


def test_min_replicas_is_kept_and_reached_at_once():
    ctx = FakeContext(1, requests={"r1": 0}, capacity_adjusted_min_replicas=1)
    assert run(ctx, at=[1000, 5000]) == 1
    assert run(FakeContext(0, requests={}, capacity_adjusted_min_replicas=2)) == 2


def test_max_replicas_bounds_the_demand():
    ctx = FakeContext(2, requests={"r1": 50, "r2": 50}, capacity_adjusted_max_replicas=4)
    assert run(ctx, at=[1000, 1010]) == 4


def test_requests_queued_at_zero_replicas_start_one_without_delay():
    ctx = FakeContext(0, requests={}, total_queued_requests=1, total_num_requests=1)
    assert run(ctx) == 1
    ctx = FakeContext(0, requests={}, total_queued_requests=10, total_num_requests=10)
    assert run(ctx) == 3  # ceil(10 / 4)


def test_no_request_at_zero_replicas_stays_at_zero():
    assert run(FakeContext(0, requests={})) == 0


def test_a_replica_being_started_is_not_cancelled_while_its_request_waits():
    ctx = FakeContext(1, requests={}, running=[], total_queued_requests=1, total_num_requests=1)
    assert run(ctx, at=[1000, 2000]) == 1


def test_residency_pressure_on_every_replica_adds_one():
    ctx = FakeContext(2, requests={"r1": 2, "r2": 2}, pressure={"r1": 1.0, "r2": 0.4})
    assert run(ctx, at=[1000, 1010]) == 3


def test_residency_pressure_on_some_replicas_adds_none():
    ctx = FakeContext(2, requests={"r1": 2, "r2": 2}, pressure={"r1": 1.0, "r2": 0.0})
    assert run(ctx, at=[1000, 1010]) == 2


def test_residency_pressure_can_be_ignored():
    knobs = replace(KNOBS, upscale_delay_s=0, scale_on_residency_pressure=False)
    ctx = FakeContext(1, requests={"r1": 2}, pressure={"r1": 1.0})
    assert run(ctx, knobs) == 1


def test_a_replica_that_has_not_reported_yet_counts_by_serves_own_numbers():
    ctx = FakeContext(2, requests={"r1": 1}, running=["r1", "r2"], total_num_requests=12)
    assert run(ctx, at=[1000, 1010]) == 3


def test_serves_own_policy_state_is_kept():
    ctx = FakeContext(1, requests={"r1": 9}, policy_state={"__decision_counters": 0})
    run(ctx, at=[1000])
    assert ctx.policy_state["__decision_counters"] == 0
