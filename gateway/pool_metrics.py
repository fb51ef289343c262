"""The pool's state as Prometheus metrics on the gateway's /metrics.

Replicas live in other processes (Ray actors), so the gateway polls `Backend.stats()` in the
background and a collector renders the latest snapshot at scrape time: a scrape never waits on
the pool, and a slow pool never slows a scrape.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)


class PoolMetricsCollector:
    def __init__(self):
        self.snapshot: list[dict] = []

    def collect(self):
        resident = GaugeMetricFamily("muxgate_pool_resident_models", "Models resident on a replica's device.",
                                     labels=["replica"])
        tier_bytes = GaugeMetricFamily("muxgate_pool_bytes", "Bytes held per tier (device reserved, host warm copies).",
                                       labels=["replica", "tier"])
        capacity = GaugeMetricFamily("muxgate_pool_capacity_bytes", "Byte budget per tier.", labels=["replica", "tier"])
        model_bytes = GaugeMetricFamily("muxgate_pool_model_bytes", "Device bytes reserved by a resident model.",
                                        labels=["replica", "model"])
        queue = GaugeMetricFamily("muxgate_pool_queue_depth", "Requests waiting for their model to load.",
                                  labels=["replica", "model"])
        loads = CounterMetricFamily("muxgate_pool_loads", "Model loads by source tier (cold: disk, warm: host).",
                                    labels=["replica", "tier"])
        swap = CounterMetricFamily("muxgate_pool_swap_in_seconds", "Seconds spent bringing models to the device.",
                                   labels=["replica", "tier"])
        evictions = CounterMetricFamily("muxgate_pool_evictions", "Models evicted from the device.", labels=["replica"])
        failures = CounterMetricFamily("muxgate_pool_load_failures", "Loads that failed.", labels=["replica"])
        preemptions = CounterMetricFamily(
            "muxgate_pool_preemptions", "Times a request was preempted on a model paused for another model's load "
            "(its KV released, recomputed when the model is back).", labels=["replica"])
        recomputed = CounterMetricFamily(
            "muxgate_pool_recomputed_tokens", "KV positions of preempted requests computed again when they resumed.",
            labels=["replica"])
        drafted = CounterMetricFamily(
            "muxgate_pool_draft_tokens", "Speculative decoding: tokens a draft proposed for a resident model, and "
            "those the model accepted (accepted / proposed is the acceptance rate; resets when the model reloads).",
            labels=["replica", "model", "outcome"])
        start = GaugeMetricFamily(
            "muxgate_pool_replica_start_seconds", "Seconds a replica's constructor took to make it ready (the pool, "
            "the first load's one-time costs); its process start before that shows in the cold-start waits.",
            labels=["replica"])
        cold_waits = CounterMetricFamily(
            "muxgate_pool_cold_start_waits", "Requests sent to the pool before this replica was ready and served by "
            "it (at 0 replicas: the requests that waited for a cold start).", labels=["replica"])
        cold_wait = CounterMetricFamily(
            "muxgate_pool_cold_start_wait_seconds", "Seconds those requests waited for the replica, from the gateway "
            "sending them to the replica receiving them (before their model's load).", labels=["replica"])
        for s in self.snapshot:
            r = str(s.get("replica"))
            resident.add_metric([r], len(s.get("resident", [])))
            tier_bytes.add_metric([r, "device"], s.get("device_reserved_bytes", 0))
            tier_bytes.add_metric([r, "host"], s.get("host_used_bytes", 0))
            capacity.add_metric([r, "device"], s.get("device_capacity_bytes", 0))
            capacity.add_metric([r, "host"], s.get("host_capacity_bytes", 0))
            for model, nbytes in s.get("resident_bytes", {}).items():
                model_bytes.add_metric([r, model], nbytes)
            for model, depth in s.get("queue_depth", {}).items():
                queue.add_metric([r, model], depth)
            for tier, n in s.get("loads", {}).items():
                loads.add_metric([r, tier], n)
            for tier, secs in s.get("load_seconds", {}).items():
                swap.add_metric([r, tier], secs)
            evictions.add_metric([r], s.get("evictions", 0))
            failures.add_metric([r], s.get("load_failures", 0))
            preemptions.add_metric([r], s.get("preemptions", 0))
            recomputed.add_metric([r], s.get("recomputed_tokens", 0))
            for model, counts in s.get("draft_tokens", {}).items():
                for outcome, n in counts.items():
                    drafted.add_metric([r, model, outcome], n)
            if "replica_start_seconds" in s:  # Ray replicas only
                start.add_metric([r], s["replica_start_seconds"])
                cold_waits.add_metric([r], s.get("cold_start_waits", 0))
                cold_wait.add_metric([r], s.get("cold_start_wait_seconds", 0.0))
        yield from (resident, tier_bytes, capacity, model_bytes, queue, loads, swap, evictions, failures, preemptions,
                    recomputed, drafted, start, cold_waits, cold_wait)


async def poll_pool_stats(backend, collector: PoolMetricsCollector, period_s: float = 2.0) -> None:
    """Refresh the collector's snapshot until cancelled."""
    while True:
        try:
            collector.snapshot = await backend.stats()
        except Exception as exc:  # the pool may be starting or restarting; keep the last snapshot
            log.debug("pool stats unavailable: %s", exc)
        await asyncio.sleep(period_s)
