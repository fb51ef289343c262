"""The pool replica's shutdown: Serve calls the replica's `__del__` after draining it."""

import asyncio

import pytest

from workers.serve_app import PoolOptions, PoolReplica
from workers.types import GenerationRequest, ModelSpec


def test_the_replica_shutdown_hook_stops_its_engines_and_frees_its_models(zoo_dir):
    specs = [ModelSpec(n, str(zoo_dir / n)) for n in ("mux-2m", "mux-5m")]
    # The class behind the deployment, run in this process: what a replica actor holds.
    replica = PoolReplica.func_or_class(specs, PoolOptions(torch_threads=1, kv_reserve_tokens=64))

    async def ask(model):
        req = GenerationRequest("t", prompt="hi", max_tokens=2, temperature=0)
        return [c async for c in replica.generate(model, req)]

    for model in ("mux-2m", "mux-5m"):
        assert asyncio.run(ask(model))[-1].finish_reason
    engines = [r.engine for r in replica.pool._resident.values()]
    assert len(engines) == 2 and all(e._thread.is_alive() for e in engines)

    replica.__del__()  # what Serve runs when it stops the replica (application deleted, scale-down)

    assert replica.stats()["resident"] == []
    assert replica.stats()["device_reserved_bytes"] == 0
    assert not any(e._thread.is_alive() for e in engines)
    replica.__del__()  # Python's own __del__ later: a no-op


def test_a_replica_whose_constructor_failed_shuts_down_quietly():
    replica = PoolReplica.func_or_class.__new__(PoolReplica.func_or_class)
    replica.__del__()


@pytest.mark.ray
def test_deleting_the_pool_application_is_waited_for_within_a_bound(zoo_dir):
    """The path taken on a cluster muxgate did not start (given by address), run on a local Ray:
    the application is deleted and waited for within the bound, not Serve's 60 s."""
    import ray
    from ray import serve

    from workers.serve_app import APP_NAME, _delete_app, deploy_pool, shutdown_pool

    specs = [ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))]
    handle = deploy_pool(specs, PoolOptions(num_cpus=0.5, torch_threads=1, kv_reserve_tokens=64, shutdown_grace_s=5))
    try:
        async def ask():
            gen = handle.options(stream=True).generate.remote(
                "mux-2m", GenerationRequest("t", prompt="hi", max_tokens=2, temperature=0))
            return [c async for c in gen]

        assert asyncio.run(ask())[-1].finish_reason
        assert _delete_app(timeout_s=60) is True
        assert APP_NAME not in serve.status().applications
    finally:
        shutdown_pool()
    assert not ray.is_initialized()
