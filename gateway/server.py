"""`muxgate serve`: build what the config names, deploy the pool, and run the gateway."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

import uvicorn

from gateway.http.app import create_app
from gateway.tenancy.auth import resolve_key
from gateway.upstreams.backends import Backend, InProcessBackend, RayServeBackend
from gateway.config import MuxgateConfig
from gateway.tenancy.wiring import resolve_admin_key
from workers.types import ModelSpec

log = logging.getLogger("muxgate.server")


def model_specs(config: MuxgateConfig) -> list[ModelSpec]:
    ensure_gguf(config)
    return [ModelSpec(m.name, config.model_path(m), m.dtype, m.quantization) for m in config.pool_models()]


def ensure_gguf(config: MuxgateConfig) -> None:
    """Convert the GGUF files the config serves that have no cache directory yet (once per file:
    ~20-40 s for SmolLM2-135M; later starts only hash the file)."""
    for m in config.pool_models():
        if m.gguf is not None:
            from workers.gguf import is_gguf_dir, prepare

            if not is_gguf_dir(config.model_path(m)):
                print(f"muxgate: converting {m.gguf.resolve().name} for {m.name} (first start only)", flush=True)
            prepare(m.gguf.resolve(), m.gguf.cache_dir)


def upstream_backends(config: MuxgateConfig) -> dict:
    from gateway.upstreams.remote import UpstreamBackend

    out = {}
    for m in config.models:
        if m.upstream is not None:
            key = os.environ.get(m.upstream.api_key_env) if m.upstream.api_key_env else None
            out[m.name] = UpstreamBackend(m.name, m.upstream.base_url, m.upstream.model, api_key=key,
                                          timeout_s=m.upstream.timeout_s, context_length=m.upstream.context_length)
    return out


def ensure_zoo(config: MuxgateConfig, progress: bool = True) -> None:
    """Build the zoo models the config serves and that are not on disk yet."""
    names = [m.name for m in config.models if m.zoo]
    if names and config.zoo.build_on_start:
        from pathlib import Path

        from workers.zoo import build_zoo

        build_zoo(Path(config.zoo.dir), names, progress=progress)


def pool_options(config: MuxgateConfig) -> dict:
    """The `pool:` section as ModelPool keyword arguments."""
    pool = config.pool
    mib = 1024 * 1024
    return dict(max_resident=pool.max_resident_models, load_timeout_s=pool.load_timeout_s,
                torch_threads=pool.torch_threads,
                device_budget_bytes=int(pool.device_budget_mb * mib) if pool.device_budget_mb else None,
                host_budget_bytes=int(pool.host_budget_mb * mib), eviction=pool.eviction,
                kv_reserve_tokens=pool.kv_reserve_tokens, prefix_cache_bytes=int(pool.prefix_cache_mb * mib),
                max_queued_requests=pool.max_queued_requests, preempt_after_s=pool.preempt_after_s)


def make_backend(config: MuxgateConfig, use_ray: bool, ray_address: str | None = None) -> Backend:
    """The pool (Ray Serve or in-process) plus any remote upstreams, behind one Backend."""
    from gateway.upstreams.remote import RoutedBackends

    return RoutedBackends(make_pool_backend(config, use_ray, ray_address), upstream_backends(config))


def make_pool_backend(config: MuxgateConfig, use_ray: bool, ray_address: str | None = None) -> Backend | None:
    pool = config.pool
    specs = model_specs(config)
    if not specs:
        return None  # a gateway for remote upstreams only: no pool, no Ray
    options = pool_options(config)
    if not use_ray:
        return InProcessBackend(specs, **options)
    # /v1/models and /readyz read the checkpoints here, so a pool scaled to zero is not woken by them
    listing = dict(specs=specs, kv_reserve_tokens=pool.kv_reserve_tokens)
    if not pool.deploy:
        from workers.serve_app import attach_pool

        return RayServeBackend(attach_pool(ray_address or pool.ray_address), owns_app=False, **listing)
    from workers.serve_app import deploy_pool

    return RayServeBackend(deploy_pool(specs, ray_pool_options(config), ray_address or pool.ray_address), **listing)


def ray_pool_options(config: MuxgateConfig):
    """The `pool:` section as the Serve deployment's PoolOptions (`muxgate serve` and the cluster's
    builder, deploy/serve/muxgate_pool_app.py, deploy the same)."""
    from workers.serve_app import PoolOptions

    pool, options = config.pool, pool_options(config)
    return PoolOptions(replicas=pool.replicas, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
                       torch_threads=pool.torch_threads, max_resident_models=pool.max_resident_models,
                       load_timeout_s=pool.load_timeout_s, max_ongoing_requests=pool.max_ongoing_requests,
                       autoscaling=pool.autoscaling.model_dump() if pool.autoscaling is not None else None,
                       device_budget_bytes=options["device_budget_bytes"],
                       host_budget_bytes=options["host_budget_bytes"], eviction=pool.eviction,
                       kv_reserve_tokens=pool.kv_reserve_tokens,
                       prefix_cache_bytes=options["prefix_cache_bytes"], shutdown_grace_s=pool.shutdown_grace_s,
                       max_queued_requests=pool.max_queued_requests, spread_hot_models=pool.spread_hot_models,
                       hot_waiting_requests=pool.hot_waiting_requests, preempt_after_s=pool.preempt_after_s)


def announce(config: MuxgateConfig, host: str, port: int) -> None:
    print(f"muxgate listening on http://{host}:{port}/v1  (models: {', '.join(m.name for m in config.models)})",
          flush=True)
    for key in config.keys:
        if key.key_file:  # local demo keys live in a file the operator owns; show them once here
            print(f"demo key for team '{key.team}': {resolve_key(key)[0]}  (from {key.key_file})", flush=True)
    if config.store.url:
        print(f"usage store: {config.store.url}; reports at http://{host}:{port}/reports", flush=True)
        admin = config.admin
        if admin.key_env and os.environ.get(admin.key_env):
            print(f"admin key: from ${admin.key_env}", flush=True)
        elif admin.key_file and not admin.key:  # never print the admin secret itself
            print(f"admin key: in {admin.key_file}", flush=True)


def serve(config: MuxgateConfig, host: str | None = None, port: int | None = None, use_ray: bool = True,
          ray_address: str | None = None) -> None:
    host = host or config.server.host
    port = config.server.port if port is None else port
    for key in config.keys:
        resolve_key(key)  # fail early on a missing env var; create demo key files
    resolve_admin_key(config.admin)  # fail early on a short admin key; create its file
    ensure_zoo(config)
    backend = make_backend(config, use_ray, ray_address)
    app = create_app(config, backend)
    # a stream still running at shutdown gets `shutdown_grace_s`, then is closed (unbounded by default)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=30,
                                           access_log=False,
                                           timeout_graceful_shutdown=config.server.shutdown_grace_s))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            announce(config, host, bound)
            # What start-up built lives as long as the process: out of the collector's sight, a
            # full collection no longer walks it (a pause of milliseconds under load otherwise).
            gc.freeze()
        await task

    try:  # uvloop (from uvicorn[standard]) runs the event loop at about half the CPU per request
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    if not server.started:
        sys.exit(1)
