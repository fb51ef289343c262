"""The pool as a Ray Serve application ("pool"): replicas that each run a ModelPool.

Importing this module imports Ray Serve but not torch: the gateway process builds and deploys
the application, and torch is imported only inside the replicas.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from ray import serve

from workers.types import GenerationChunk, GenerationRequest, ModelInfo, ModelSpec

APP_NAME = "pool"
DEPLOYMENT_NAME = "ModelPool"
BOARD_NAME = "muxgate-pool-board"
BOARD_NAMESPACE = "serve"  # where Serve runs the replicas
ROUTING_STATS_PERIOD_S = 0.5
_board = None


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
    autoscaling: dict | None = None
    env: dict = field(default_factory=dict)


@serve.deployment(name=DEPLOYMENT_NAME)
class PoolReplica:
    """One replica: a ModelPool on this replica's device."""

    def __init__(self, specs: list[ModelSpec], options: PoolOptions):
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
                              prefix_cache_bytes=options.prefix_cache_bytes)
        self.pool.warm_up()

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in self.pool.generate(model, req):
            yield chunk

    def models(self) -> list[ModelInfo]:
        return self.pool.models()

    def stats(self) -> dict:
        return self.pool.stats()

    def record_routing_stats(self) -> dict:
        """Called by Serve's controller every ROUTING_STATS_PERIOD_S; read by ModelAwareRouter."""
        stats = self.pool.stats()
        try:
            import ray

            ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE).report.remote(stats["replica"], stats)
        except Exception:  # no board (e.g. deployed by other means): routing still works
            pass
        return {
            "resident": stats["resident"],
            "loading": stats["loading"],
            "host_models": stats["host_models"],
            "free_bytes": stats["device_capacity_bytes"] - stats["device_reserved_bytes"],
            "in_flight": sum(stats["in_flight"].values()),
        }


def build_pool_app(specs: list[ModelSpec], options: PoolOptions):
    """The bound application; `serve.run(build_pool_app(...), name=APP_NAME, route_prefix=None)`."""
    actor_options = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus}
    if options.env:
        actor_options["runtime_env"] = {"env_vars": dict(options.env)}
    from ray.serve.config import RequestRouterConfig

    from workers.replica_router import ModelAwareRouter

    kwargs = {"ray_actor_options": actor_options, "max_ongoing_requests": options.max_ongoing_requests,
              "request_router_config": RequestRouterConfig(request_router_class=ModelAwareRouter,
                                                           request_routing_stats_period_s=ROUTING_STATS_PERIOD_S)}
    if options.autoscaling:
        kwargs["autoscaling_config"] = options.autoscaling
    else:
        kwargs["num_replicas"] = options.replicas
    return PoolReplica.options(**kwargs).bind(specs, options)


def deploy_pool(specs: list[ModelSpec], options: PoolOptions, ray_address: str | None = None):
    """Start (or attach to) Ray, deploy the pool, and return its DeploymentHandle."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, configure_logging=True)
    serve.start(proxy_location="Disabled")
    global _board  # a named actor lives as long as a handle to it does: keep one
    _board = ray.remote(num_cpus=0)(PoolBoard).options(name=BOARD_NAME, namespace=BOARD_NAMESPACE,
                                                       get_if_exists=True).remote()
    return serve.run(build_pool_app(specs, options), name=APP_NAME, route_prefix=None)


def attach_pool(ray_address: str | None = None):
    """Attach to a pool application the cluster deployed (RayService, `serve deploy`); deploys nothing."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address or "auto", include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, configure_logging=True)
    return serve.get_app_handle(APP_NAME)


async def replica_stats() -> list[dict]:
    """Every replica's latest pool stats (as posted to the board)."""
    import ray

    return await ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE).all.remote()


def shutdown_pool() -> None:
    import ray

    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()
