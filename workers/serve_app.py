"""The pool as a Ray Serve application ("pool"): replicas that each run a ModelPool.

Importing this module imports Ray Serve but not torch: the gateway process builds and deploys
the application, and torch is imported only inside the replicas.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields
from typing import AsyncIterator

from ray import serve

from workers.replica_ranking import HOT_WAITING_REQUESTS
from workers.autoscaling import PRESSURE_METRIC, REQUESTS_METRIC, ScalingKnobs
from workers.types import GenerationChunk, GenerationRequest, ModelInfo, ModelSpec

APP_NAME = "pool"
DEPLOYMENT_NAME = "ModelPool"
BOARD_NAME = "muxgate-pool-board"
BOARD_NAMESPACE = "serve"  # where Serve runs the replicas
ROUTING_STATS_PERIOD_S = 0.5
SHUTDOWN_GRACE_S = 10.0  # a stopping replica's in-flight requests get this long (Serve's default: 20 s)
SHUTDOWN_WAIT_LOOP_S = 0.2  # how often a stopping replica checks for in-flight requests (Serve's default: 2 s)
SHUTDOWN_MARGIN_S = 5.0  # on top of the grace: the controller's stop, the replica's hook, the status poll
POLICY_PATH = "workers.autoscaling:PoolAutoscalingPolicy"
_board = None
_handles: list = []  # the pool handles deploy_pool / attach_pool gave out: their routers stop at shutdown_pool
_shutdown_grace_s = SHUTDOWN_GRACE_S  # of the application deploy_pool deployed
log = logging.getLogger("muxgate.pool")


class PoolBoard:
    """A small named actor where replicas post their pool stats, so the gateway sees every replica."""

    def __init__(self):
        self._stats: dict[str, tuple[float, dict]] = {}

    def report(self, replica: str, stats: dict) -> None:
        self._stats[replica] = (time.time(), stats)

    def all(self, max_age_s: float = 30.0) -> list[dict]:
        now = time.time()
        return [s for t, s in self._stats.values() if now - t <= max_age_s]


@dataclass(frozen=True)
class PoolOptions:
    """How the pool deployment runs; filled from the `pool:` section of the config."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    torch_threads: int = 1
    max_resident_models: int | None = None
    device_budget_bytes: int | None = None
    host_budget_bytes: int = 0
    eviction: str = "gdsf"
    kv_reserve_tokens: int = 2048
    prefix_cache_bytes: int = 64 * 1024 * 1024
    load_timeout_s: float = 120.0
    max_ongoing_requests: int = 256
    max_queued_requests: int = 256  # waiting for their first token, per replica (fair by team)
    autoscaling: dict | None = None  # the `pool.autoscaling` section's fields; None: `replicas`, fixed
    env: dict = field(default_factory=dict)
    shutdown_grace_s: float = SHUTDOWN_GRACE_S  # Serve's graceful_shutdown_timeout_s for a stopping replica
    # a hot model goes to a second replica with room (workers/replica_ranking.py); its holders count
    # as hot when more than hot_waiting_requests of its requests wait there for their first token
    spread_hot_models: bool = True
    hot_waiting_requests: int = HOT_WAITING_REQUESTS
    preempt_after_s: float | None = 2.0  # a paused model's requests still running this long after are preempted


@dataclass
class ColdStart:
    """What a replica's start cost: its constructor (ModelPool, warm-up) and the wait of the
    requests sent to the pool before this replica was ready (at 0 replicas: a cold start)."""

    start_seconds: float  # constructor, warm-up included
    ready_at: float  # wall clock, comparable with GenerationRequest.sent_at on one machine (NTP across)
    waits: int = 0
    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0

    def arrived(self, req: GenerationRequest) -> None:
        if req.sent_at is not None and req.sent_at < self.ready_at:
            wait = max(0.0, time.time() - req.sent_at)
            self.waits += 1
            self.wait_seconds += wait
            self.max_wait_seconds = max(self.max_wait_seconds, wait)

    def stats(self) -> dict:
        return {"replica_start_seconds": round(self.start_seconds, 3), "replica_ready_at": self.ready_at,
                "cold_start_waits": self.waits, "cold_start_wait_seconds": round(self.wait_seconds, 3),
                "cold_start_max_wait_seconds": round(self.max_wait_seconds, 3)}


def serve_autoscaling_config(section: dict):
    """The `pool.autoscaling` section as Serve's AutoscalingConfig: our policy decides, with its own
    delays, so Serve's wrapper around it is neutral (delays 0, scaling factors 1)."""
    import warnings

    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    knobs = {f.name: section[f.name] for f in fields(ScalingKnobs)}
    with warnings.catch_warnings():  # metrics_interval_s is "deprecated" yet what Serve's pushers run on
        warnings.simplefilter("ignore", DeprecationWarning)
        return AutoscalingConfig(
            min_replicas=section["min_replicas"], max_replicas=section["max_replicas"],
            look_back_period_s=section["look_back_period_s"], metrics_interval_s=section["metrics_interval_s"],
            upscale_delay_s=0.0, downscale_delay_s=0.0, downscale_to_zero_delay_s=0.0,
            policy=AutoscalingPolicy(policy_function=POLICY_PATH, policy_kwargs=knobs))


@serve.deployment(name=DEPLOYMENT_NAME)
class PoolReplica:
    """One replica: a ModelPool on this replica's device."""

    def __init__(self, specs: list[ModelSpec], options: PoolOptions):
        started = time.monotonic()
        from workers.pool import ModelPool

        device = "cuda" if options.num_gpus > 0 else "cpu"
        try:
            replica = serve.get_replica_context().replica_tag
        except Exception:
            replica = f"replica-{os.getpid()}"
        self.pool = ModelPool(specs, device=device, max_resident=options.max_resident_models,
                              load_timeout_s=options.load_timeout_s, replica_id=replica,
                              torch_threads=options.torch_threads, device_budget_bytes=options.device_budget_bytes,
                              host_budget_bytes=options.host_budget_bytes, eviction=options.eviction,
                              kv_reserve_tokens=options.kv_reserve_tokens,
                              prefix_cache_bytes=options.prefix_cache_bytes,
                              max_queued_requests=options.max_queued_requests,
                              preempt_after_s=options.preempt_after_s,
                              gpu_share=options.num_gpus if options.num_gpus > 0 else 1.0)
        self.pool.warm_up()
        self.requests = 0  # on this replica: waiting for their first token or generating
        self.cold_start = ColdStart(start_seconds=time.monotonic() - started, ready_at=time.time())

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.cold_start.arrived(req)
        self.requests += 1
        try:
            async for chunk in self.pool.generate(model, req):
                yield chunk
        finally:
            self.requests -= 1

    def models(self) -> list[ModelInfo]:
        return self.pool.models()

    def __del__(self):
        """Serve's shutdown hook (after the replica drained its requests): stop every engine's
        scheduler thread and give its weights and KV cache back, instead of leaving that to the
        process's death."""
        pool = getattr(self, "pool", None)  # None: the constructor failed
        if pool is not None:
            pool.close()

    def stats(self) -> dict:
        return {**self.pool.stats(), **self.cold_start.stats()}

    async def record_autoscaling_stats(self) -> dict:
        """Called by Serve every min(look_back_period_s / 5, metrics_interval_s) while autoscaling
        (on the replica's event loop, where the pool lives); read by workers/autoscaling.py in
        Serve's controller. Pressure: models take turns, or a load waits for room (no reservation yet)."""
        pressure = bool(self.pool.stats()["paused"] or self.pool.blocked_loads())
        return {REQUESTS_METRIC: float(self.requests), PRESSURE_METRIC: 1.0 if pressure else 0.0}

    def record_routing_stats(self) -> dict:
        """Called by Serve's controller every ROUTING_STATS_PERIOD_S; read by ModelAwareRouter."""
        stats = self.stats()
        try:
            import ray

            ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE).report.remote(stats["replica"], stats)
        except Exception:  # no board (e.g. deployed by other means): routing still works
            pass
        free = stats["device_capacity_bytes"] - stats["device_reserved_bytes"]
        return {
            "resident": stats["resident"],
            "loading": stats["loading"],
            "host_models": stats["host_models"],
            "free_bytes": free,
            "in_flight": sum(stats["in_flight"].values()),
            # what workers/replica_ranking.py needs to spread a hot model to a replica with room
            "in_flight_by_model": stats["in_flight"],
            "waiting": self.pool.waiting_by_model(),
            "paused": stats["paused"],
            "reserved": stats["resident_bytes"],  # what another replica needs free to load each one
            # resident models with no request: a load may evict them, so their bytes are room too
            "idle_bytes": sum(n for name, n in stats["resident_bytes"].items() if not stats["in_flight"].get(name)),
            "blocked_loads": self.pool.blocked_loads(),
        }


def build_pool_app(specs: list[ModelSpec], options: PoolOptions):
    """The bound application; `serve.run(build_pool_app(...), name=APP_NAME, route_prefix=None)`."""
    actor_options = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus}
    if options.env:
        actor_options["runtime_env"] = {"env_vars": dict(options.env)}
    from ray.serve.config import RequestRouterConfig

    from workers.replica_router import ModelAwareRouter

    kwargs = {"ray_actor_options": actor_options, "max_ongoing_requests": options.max_ongoing_requests,
              "graceful_shutdown_timeout_s": options.shutdown_grace_s,
              "graceful_shutdown_wait_loop_s": SHUTDOWN_WAIT_LOOP_S,
              "request_router_config": RequestRouterConfig(request_router_class=ModelAwareRouter,
                                                           request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
                                                           request_router_kwargs={
                                                               "spread_hot_models": options.spread_hot_models,
                                                               "hot_waiting_requests": options.hot_waiting_requests})}
    if options.autoscaling is not None:
        kwargs["autoscaling_config"] = serve_autoscaling_config(options.autoscaling)
    else:
        kwargs["num_replicas"] = options.replicas
    return PoolReplica.options(**kwargs).bind(specs, options)


def _stats_board(held):
    """The named stats board, created if this cluster has none. A named actor lives as long as its
    creator's handle does, so the handle that created it is kept (`held`): replacing it with the
    handle `get_if_exists` returns for a second deployment from this process killed the board."""
    import ray

    if held is not None:
        try:
            ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)
            return held  # still ours, still alive
        except ValueError:  # a new Ray session (ray.shutdown, init again): the old board is gone
            pass
    return ray.remote(num_cpus=0)(PoolBoard).options(name=BOARD_NAME, namespace=BOARD_NAMESPACE,
                                                     get_if_exists=True).remote()


def deploy_pool(specs: list[ModelSpec], options: PoolOptions, ray_address: str | None = None):
    """Start (or attach to) Ray, deploy the pool, and return its DeploymentHandle."""
    import ray

    if not ray.is_initialized():
        if ray_address is None and not os.environ.get("RAY_ADDRESS"):  # a local Ray of our own
            # Its driver flushes task events (for `ray list tasks`) when it disconnects, for up to 5 s
            # when the GCS is already gone (see shutdown_pool); a local Ray dies with us anyway.
            os.environ.setdefault("RAY_task_events_shutdown_flush_timeout_ms", "500")
        ray.init(address=ray_address, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, configure_logging=True)
    _auto_connect(True)
    serve.start(proxy_location="Disabled")
    global _board, _shutdown_grace_s
    _shutdown_grace_s = options.shutdown_grace_s
    _board = _stats_board(_board)
    handle = serve.run(build_pool_app(specs, options), name=APP_NAME, route_prefix=None)
    _handles.append(handle)
    return handle


def attach_pool(ray_address: str | None = None):
    """Attach to a pool application the cluster deployed (RayService, `serve deploy`); deploys nothing."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address or "auto", include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, configure_logging=True)
    _auto_connect(True)
    handle = serve.get_app_handle(APP_NAME)
    _handles.append(handle)
    return handle


async def replica_stats() -> list[dict]:
    """Every replica's latest pool stats (as posted to the board)."""
    import ray

    return await ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE).all.remote()


def _own_local_ray():
    """The Ray node muxgate started itself (ray.init without an address), or None when it attached
    to a cluster someone else runs (an address, RAY_ADDRESS, a Ray Client)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    return node if node is not None and node.is_head() else None


def _delete_app(timeout_s: float) -> bool:
    """Delete the pool application and wait until Serve reports it gone, at most `timeout_s`
    (`serve.delete` would poll once a second for up to 60 s, and wait without bound on a controller
    that died). True when the application is gone."""
    import ray
    from ray.serve._private.application_state import StatusOverview
    from ray.serve.context import _get_global_client
    from ray.serve.generated.serve_pb2 import StatusOverview as StatusOverviewProto
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    client = _get_global_client()
    client.delete_apps([APP_NAME], blocking=False)  # replicas drain (up to the grace), run __del__, exit
    while (left := deadline - time.monotonic()) > 0:
        raw = ray.get(client._controller.get_serve_status.remote(APP_NAME), timeout=left)
        status = StatusOverview.from_proto(StatusOverviewProto.FromString(raw)).app_status.status
        if status == ApplicationStatus.NOT_STARTED:  # what Serve reports for an application it no longer has
            return True
        time.sleep(0.05)
    return False


def shutdown_pool() -> None:
    """Take the pool down at shutdown, bounded; called after the gateway drained its requests.

    A local Ray that muxgate started is muxgate's alone: ray.shutdown() stops its processes, the
    replicas with them, at once. Deleting the Serve application first would only wait on Serve
    (its drain loop and 1 s status polls: ~3 s idle), and, when the signal also reached Ray's own
    processes (sent to the process group, `kill -- -PGID`, or the service's cgroup, systemd's stop),
    wait on a dead controller until Ray's 60 s GCS timeout aborts the process.

    On a cluster given by address the application is deleted, so its replicas drain (their
    in-flight requests get the deployment's graceful_shutdown_timeout_s, PoolOptions.shutdown_grace_s)
    and run their shutdown hook; after that grace plus a margin muxgate stops waiting. ray.shutdown()
    then only disconnects: a cluster muxgate did not start is never torn down.
    """
    import ray

    _auto_connect(False)  # before ray.shutdown: once it is under way, is_initialized() is already False
    if not ray.is_initialized():
        return
    bound_s = _shutdown_grace_s + SHUTDOWN_MARGIN_S
    started = time.monotonic()
    try:
        if _own_local_ray() is None and not _delete_app(bound_s):
            log.warning("the pool application was not deleted within %.0f s; leaving it to Serve", bound_s)
    except Exception as exc:  # a controller that died meanwhile, a timeout: disconnect all the same
        log.warning("could not delete the pool application: %r", exc)
    finally:
        _stop_handle_routers(bound_s)
        ray.shutdown()
        log.info("pool shut down in %.1f s", time.monotonic() - started)


def _stop_handle_routers(bound_s: float) -> None:
    """Stop the Serve routers of the handles this process was given (handle.options() shares its
    handle's router): each runs background tasks (long polls, an autoscaling pool's metrics pusher
    every interval) on Serve's router thread, which outlives ray.shutdown() and would go on calling
    into a Ray that is gone. Bounded: a router that does not stop in time is left to the process."""
    import threading

    handles, _handles[:] = list(_handles), []
    for handle in handles:
        stopper = threading.Thread(target=handle.shutdown, daemon=True, name="serve-handle-shutdown")
        stopper.start()
        stopper.join(min(2.0, bound_s))
        if stopper.is_alive():
            log.warning("a pool handle's router did not stop within 2 s; leaving it")


def _auto_connect(enabled: bool) -> None:
    """Ray's auto-init (any Ray call starts a local Ray when none is connected) is off from
    shutdown_pool until deploy_pool or attach_pool connect again: Serve handles keep background
    threads that outlive ray.shutdown() (a handle's autoscaling metrics pusher calls ray.wait every
    interval), and one such call would start a new local Ray that no one owns or stops, so the
    process's next ray.init failed ("called ray.init twice"). Both connect explicitly."""
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = enabled and os.environ.get("RAY_ENABLE_AUTO_CONNECT", "") != "0"
