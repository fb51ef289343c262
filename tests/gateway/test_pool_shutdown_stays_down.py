"""After the gateway takes its Ray pool down, Ray stays down in that process. Serve handles keep
background threads (a handle's autoscaling metrics pusher calls `ray.wait` every interval) that
outlive ray.shutdown(); Ray's auto-init turned such a call into a new local Ray started from that
thread, so the process held a Ray no one owned, and the next ray.init() (a redeploy, the next test)
failed with "called ray.init twice" (seen in CI after the scale-to-zero tests)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.config import parse_config
from gateway.server import make_pool_backend
from support import make_config
from workers.types import GenerationRequest

pytestmark = pytest.mark.ray


async def answer_once_and_close(backend) -> None:
    chunks = [c async for c in backend.generate("mux-2m", GenerationRequest("t", prompt="hi", max_tokens=2,
                                                                               temperature=0))]
    assert chunks[-1].finish_reason is not None
    await backend.close()


def test_a_late_ray_call_from_a_handle_thread_does_not_start_ray_again(zoo_dir):
    import ray

    config = parse_config(make_config(zoo_dir, pool={"backend": "ray", "num_cpus": 0.5, "torch_threads": 1,
                                                     "kv_reserve_tokens": 64}))
    backend = make_pool_backend(config, use_ray=True)

    asyncio.run(answer_once_and_close(backend))
    failures: list[BaseException] = []

    def late_metrics_push():  # what a handle's metrics pusher does on its next tick
        try:
            ray.wait([], timeout=0)
        except BaseException as exc:
            failures.append(exc)

    pusher = threading.Thread(target=late_metrics_push)
    pusher.start()
    pusher.join(60)
    assert not ray.is_initialized()  # before: that call started a new local Ray
    assert failures  # the late call fails instead (Serve logs it and its thread goes on)


def test_the_handles_routers_stop_with_the_pool(zoo_dir, capfd):
    """An autoscaling pool's handle pushes metrics every interval from Serve's router thread; once
    the pool is shut down that router is stopped, instead of failing every interval for the rest
    of the process (before: "Failed to run metrics task" four times a second)."""
    import time

    config = parse_config(make_config(zoo_dir, pool={
        "backend": "ray", "num_cpus": 0.5, "torch_threads": 1, "kv_reserve_tokens": 64,
        "autoscaling": {"min_replicas": 1, "max_replicas": 1, "metrics_interval_s": 0.1, "look_back_period_s": 1}}))
    backend = make_pool_backend(config, use_ray=True)

    asyncio.run(answer_once_and_close(backend))
    capfd.readouterr()
    time.sleep(1.0)  # ten metrics intervals (Serve's router logs to stderr itself)
    assert "Failed to run metrics task" not in capfd.readouterr().err
