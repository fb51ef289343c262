"""The pool as a Ray Serve application ("pool"): replicas that each run a ModelPool.

Importing this module imports Ray Serve but not torch: the gateway process builds and deploys
the application, and torch is imported only inside the replicas.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import AsyncIterator

from ray import serve

from workers.types import GenerationChunk, GenerationRequest, ModelInfo, ModelSpec

APP_NAME = "pool"
DEPLOYMENT_NAME = "ModelPool"


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
                              kv_reserve_tokens=options.kv_reserve_tokens)

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in self.pool.generate(model, req):
            yield chunk

    def models(self) -> list[ModelInfo]:
        return self.pool.models()

    def stats(self) -> dict:
        return self.pool.stats()


def build_pool_app(specs: list[ModelSpec], options: PoolOptions):
    """The bound application; `serve.run(build_pool_app(...), name=APP_NAME, route_prefix=None)`."""
    actor_options = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus}
    if options.env:
        actor_options["runtime_env"] = {"env_vars": dict(options.env)}
    kwargs = {"ray_actor_options": actor_options, "max_ongoing_requests": options.max_ongoing_requests}
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
    return serve.run(build_pool_app(specs, options), name=APP_NAME, route_prefix=None)


def shutdown_pool() -> None:
    import ray

    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()
