"""The pool on a real local Ray: Serve replicas, model-aware routing, per-replica stats."""

import asyncio

import pytest

from workers.serve_app import PoolOptions, deploy_pool, replica_stats, shutdown_pool
from workers.types import GenerationRequest, ModelSpec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def handle(zoo_dir):
    specs = [ModelSpec(n, str(zoo_dir / n)) for n in ("mux-2m", "mux-5m")]
    h = deploy_pool(specs, PoolOptions(replicas=2, num_cpus=0.5, torch_threads=1, kv_reserve_tokens=64))
    yield h
    shutdown_pool()


async def ask(handle, model):
    gen = handle.options(stream=True).generate.remote(model, GenerationRequest("t", prompt="hi", max_tokens=2,
                                                                                 temperature=0))
    return [c async for c in gen]


def test_requests_for_a_model_go_to_the_replica_that_holds_it(handle):
    async def go():
        first = await ask(handle, "mux-2m")
        holder = first[-1].replica
        later = [(await ask(handle, "mux-2m"))[-1].replica for _ in range(6)]
        return holder, later

    holder, later = asyncio.run(go())
    assert later == [holder] * 6


def test_every_replica_reports_its_models_and_bytes(handle):
    async def go():
        await ask(handle, "mux-5m")
        for _ in range(100):
            stats = await replica_stats()
            if len(stats) == 2 and any("mux-5m" in s["resident"] for s in stats):
                return stats
            await asyncio.sleep(0.1)
        return await replica_stats()

    stats = asyncio.run(go())
    assert len(stats) == 2
    assert len({s["replica"] for s in stats}) == 2
    holder = next(s for s in stats if "mux-5m" in s["resident"])
    assert holder["resident_bytes"]["mux-5m"] > 20_000_000
    assert holder["device_reserved_bytes"] == sum(holder["resident_bytes"].values())


def test_pool_errors_keep_their_type_across_ray(handle):
    from workers.types import ModelNotFound

    with pytest.raises(ModelNotFound):
        asyncio.run(ask(handle, "nope"))
