"""Deploying the pool again from the same process (a config change, a test's second deployment)
keeps the stats board the gateway reads: /metrics and the admin pool view go on working."""

import asyncio

import pytest

from workers.serve_app import PoolOptions, deploy_pool, replica_stats, shutdown_pool
from workers.types import GenerationRequest, ModelSpec

pytestmark = pytest.mark.ray


def test_a_second_deployment_keeps_the_stats_board(zoo_dir):
    specs = [ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))]
    options = PoolOptions(replicas=1, num_cpus=0.5, torch_threads=1, kv_reserve_tokens=64)

    async def answered_and_reported(handle) -> list[dict]:
        gen = handle.options(stream=True).generate.remote("mux-2m", GenerationRequest("t", prompt="hi", max_tokens=2,
                                                                                      temperature=0))
        assert [c async for c in gen][-1].finish_reason is not None
        for _ in range(50):
            stats = await replica_stats()  # before: the board died with the first deployment's handle
            if stats:
                return stats
            await asyncio.sleep(0.1)
        return []

    try:
        deploy_pool(specs, options)
        handle = deploy_pool(specs, PoolOptions(**{**options.__dict__, "kv_reserve_tokens": 128}))
        assert asyncio.run(answered_and_reported(handle))
    finally:
        shutdown_pool()
