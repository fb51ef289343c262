"""What a pool replica tells Serve's autoscaler and the gateway (workers/serve_app.PoolReplica),
on the replica class itself in this process: no Ray."""

import asyncio
import time

from workers.autoscaling import PRESSURE_METRIC, REQUESTS_METRIC
from workers.serve_app import ColdStart, PoolOptions, PoolReplica
from workers.types import GenerationRequest, ModelSpec


def test_a_replica_counts_its_requests_for_the_autoscaler(zoo_dir):
    replica = PoolReplica.func_or_class([ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))],
                                        PoolOptions(kv_reserve_tokens=64))

    async def go():
        idle = await replica.record_autoscaling_stats()
        stream = replica.generate("mux-2m", GenerationRequest("r1", prompt="hi", max_tokens=8, temperature=0))
        await anext(stream)
        busy = await replica.record_autoscaling_stats()
        await stream.aclose()
        return idle, busy, await replica.record_autoscaling_stats()

    try:
        idle, busy, after = asyncio.run(go())
    finally:
        replica.pool.close()
    assert idle == {REQUESTS_METRIC: 0.0, PRESSURE_METRIC: 0.0}
    assert busy[REQUESTS_METRIC] == 1.0 and after[REQUESTS_METRIC] == 0.0
    assert replica.stats()["replica_start_seconds"] > 0


def test_only_requests_sent_before_the_replica_was_ready_count_as_cold_start_waits():
    cold = ColdStart(start_seconds=2.0, ready_at=time.time())
    cold.arrived(GenerationRequest("early", prompt="hi", sent_at=cold.ready_at - 3.0))
    cold.arrived(GenerationRequest("later", prompt="hi", sent_at=time.time() + 1.0))
    cold.arrived(GenerationRequest("in-process", prompt="hi"))
    stats = cold.stats()
    assert stats["cold_start_waits"] == 1 and stats["cold_start_wait_seconds"] >= 3.0


def test_a_replica_whose_models_take_turns_reports_residency_pressure(zoo_dir):
    """Room for one model, one flooded: a second model's load pauses it, and the replica says so."""
    replica = PoolReplica.func_or_class([ModelSpec(n, str(zoo_dir / n)) for n in ("mux-2m", "mux-5m")],
                                        PoolOptions(max_resident_models=1, kv_reserve_tokens=64, load_timeout_s=20))

    async def ask(model):
        return [c async for c in replica.generate(model, GenerationRequest("t", prompt="hi", max_tokens=6,
                                                                           temperature=0))]

    async def flood(stop):
        while not stop.is_set():
            await ask("mux-2m")

    async def go():
        await ask("mux-2m")
        calm = await replica.record_autoscaling_stats()
        stop = asyncio.Event()
        flooders = [asyncio.ensure_future(flood(stop)) for _ in range(3)]
        await asyncio.sleep(0.1)
        cold = asyncio.ensure_future(ask("mux-5m"))
        seen = []
        while not cold.done():
            seen.append((await replica.record_autoscaling_stats())[PRESSURE_METRIC])
            await asyncio.sleep(0.001)
        stop.set()
        await asyncio.gather(cold, *flooders)
        return calm, seen

    try:
        calm, seen = asyncio.run(go())
    finally:
        replica.pool.close()
    assert calm[PRESSURE_METRIC] == 0.0
    assert 1.0 in seen
