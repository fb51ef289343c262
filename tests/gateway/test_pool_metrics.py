"""The pool's state reaches Prometheus: per replica, per tier, per model."""

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from gateway.pool_metrics import PoolMetricsCollector, poll_pool_stats


class FakeBackend:
    def __init__(self, snapshots):
        self.snapshots = snapshots

    async def stats(self):
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]


SNAPSHOT = [{"replica": "r1", "resident": ["mux-2m"], "resident_bytes": {"mux-2m": 8_500_000},
             "device_reserved_bytes": 8_500_000, "device_capacity_bytes": 100_000_000, "host_used_bytes": 21_000_000,
             "host_capacity_bytes": 50_000_000, "queue_depth": {"mux-5m": 3}, "loads": {"cold": 2, "warm": 1},
             "load_seconds": {"cold": 0.5, "warm": 0.1}, "evictions": 4, "load_failures": 0}]


def test_collector_renders_the_latest_pool_snapshot():
    collector = PoolMetricsCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert 'muxgate_pool_resident_models{replica="r1"}' not in generate_latest(registry).decode()

    async def poll_once():
        task = asyncio.create_task(poll_pool_stats(FakeBackend([SNAPSHOT]), collector, period_s=0.01))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(poll_once())
    text = generate_latest(registry).decode()
    assert 'muxgate_pool_resident_models{replica="r1"} 1.0' in text
    assert 'muxgate_pool_bytes{replica="r1",tier="host"} 2.1e+07' in text
    assert 'muxgate_pool_model_bytes{model="mux-2m",replica="r1"} 8.5e+06' in text
    assert 'muxgate_pool_queue_depth{model="mux-5m",replica="r1"} 3.0' in text
    assert 'muxgate_pool_loads_total{replica="r1",tier="warm"} 1.0' in text
    assert 'muxgate_pool_evictions_total{replica="r1"} 4.0' in text
    assert 'muxgate_pool_swap_in_seconds_total{replica="r1",tier="cold"} 0.5' in text


def test_a_ray_replicas_cold_start_cost_is_rendered():
    collector = PoolMetricsCollector()
    collector.snapshot = [{**SNAPSHOT[0], "replica_start_seconds": 2.5, "cold_start_waits": 1,
                           "cold_start_wait_seconds": 6.25}]
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'muxgate_pool_replica_start_seconds{replica="r1"} 2.5' in text
    assert 'muxgate_pool_cold_start_waits_total{replica="r1"} 1.0' in text
    assert 'muxgate_pool_cold_start_wait_seconds_total{replica="r1"} 6.25' in text


def test_preemptions_and_recomputed_tokens_are_rendered():
    collector = PoolMetricsCollector()
    collector.snapshot = [{**SNAPSHOT[0], "preemptions": 3, "recomputed_tokens": 1200}]
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'muxgate_pool_preemptions_total{replica="r1"} 3.0' in text
    assert 'muxgate_pool_recomputed_tokens_total{replica="r1"} 1200.0' in text
