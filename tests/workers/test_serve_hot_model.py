"""A hot model on a real local Ray pool of two replicas: when its replica is flooded, the other
replica (with room) loads it too and serves part of the flood (workers/replica_ranking.py)."""

import asyncio
import itertools

import pytest

from support import wait_until
from workers.serve_app import PoolOptions, deploy_pool, replica_stats, shutdown_pool
from workers.types import GenerationRequest, ModelSpec

pytestmark = pytest.mark.ray

HOT, COLD = "mux-2m", "mux-5m"
CLIENTS = 24  # concurrent requests for the hot model: far more than its 64-token KV reserve admits at once
MAX_FLOOD = 600  # requests at most, if the second replica never took part


@pytest.fixture(scope="module")
def handle(zoo_dir):
    specs = [ModelSpec(n, str(zoo_dir / n)) for n in (HOT, COLD)]
    h = deploy_pool(specs, PoolOptions(replicas=2, num_cpus=0.5, torch_threads=1, kv_reserve_tokens=64))
    yield h
    shutdown_pool()


async def ask(handle, model, n, max_tokens=24):
    req = GenerationRequest(f"r{n}", prompt="hi", max_tokens=max_tokens, temperature=0)
    return [c async for c in handle.options(stream=True).generate.remote(model, req)]


def holders(model):
    return {s["replica"] for s in asyncio.run(replica_stats()) if model in s["resident"]}


def test_a_flooded_model_goes_to_the_second_replica_too(handle):
    first = asyncio.run(ask(handle, HOT, 0, max_tokens=2))[-1].replica
    wait_until(lambda: holders(HOT) == {first}, what=f"{HOT} resident on {first} alone")

    async def flood():
        served, numbers = [], itertools.count(1)

        async def client():  # a closed loop: the next request once the last one is answered
            while (len(set(served)) < 2 and len(served) < MAX_FLOOD) or len(served) < 4 * CLIENTS:
                served.append((await ask(handle, HOT, next(numbers)))[-1].replica)

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        await asyncio.sleep(0.5)  # the flood is on
        cold = await ask(handle, COLD, 0, max_tokens=4)
        await asyncio.gather(*clients)
        return served, cold

    served, cold = asyncio.run(flood())
    assert cold[-1].finish_reason in ("stop", "length")  # another model is still answered meanwhile
    assert len(set(served)) == 2, f"all {len(served)} flood requests were served by {set(served)}"
    assert served.count(first) > 0  # the flood is shared, not moved
    assert holders(HOT) == set(served)  # the second replica holds the hot model now, as the first does
