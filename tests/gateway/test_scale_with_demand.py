"""The pool scales with demand on a real local Ray (issue 20 item 4), through the gateway:
`min_replicas: 0` starts no replica until a request comes, /v1/models and /readyz answer at 0
replicas without starting one, the first request waits for its replica and is answered, a queue
beyond the target adds a second replica, and without requests the pool goes back to 0. Counts are
read from serve.status(); the waits are bounded, never asserted."""

from __future__ import annotations

import concurrent.futures
import threading

import httpx
import pytest

from loadtests.scale_bench import running_replicas
from support import KEY_ALPHA, ServerThread, make_config, wait_until

pytestmark = pytest.mark.ray

SCALING = {"min_replicas": 0, "max_replicas": 2, "target_per_replica": 1, "upscale_delay_s": 0.5,
           "downscale_delay_s": 1, "downscale_to_zero_delay_s": 1, "look_back_period_s": 2,
           "metrics_interval_s": 0.25}
HEADERS = {"authorization": f"Bearer {KEY_ALPHA}"}


def chat(base_url: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", headers=HEADERS, timeout=120,
                      json={"model": "mux-2m", "max_tokens": max_tokens, "temperature": 0,
                            "messages": [{"role": "user", "content": "hello"}]})


@pytest.fixture(scope="module")
def pool(zoo_dir):
    """The Ray pool at min_replicas 0 behind two gateways: one that waits for a cold start (the
    default first-token timeout) and one whose first-token timeout is shorter than any start."""
    from gateway.config import parse_config
    from gateway.http.app import create_app
    from gateway.server import make_backend
    from loadtests.chaos_ray import KeepPool
    from workers.serve_app import shutdown_pool

    pool_section = {"backend": "ray", "num_cpus": 0.5, "torch_threads": 1, "kv_reserve_tokens": 256,
                    "autoscaling": SCALING}
    config = parse_config(make_config(zoo_dir, pool=pool_section))
    impatient = parse_config(make_config(zoo_dir, pool=pool_section, server={
        "default_max_tokens": 16, "auth_failures_per_minute": 0, "stream_first_token_timeout_s": 0.2}))
    backend = make_backend(config, use_ray=True)
    try:
        with ServerThread(create_app(config, KeepPool(backend))) as patient, \
                ServerThread(create_app(impatient, KeepPool(backend))) as hurried:
            yield backend, patient.base_url, hurried.base_url
    finally:
        shutdown_pool()


def test_scale_from_zero_to_two_and_back_to_zero(pool):
    import asyncio

    backend, base_url, _ = pool
    assert running_replicas() == 0  # min_replicas 0: deployed without a replica

    models = httpx.get(f"{base_url}/v1/models", headers=HEADERS, timeout=30)
    ready = httpx.get(f"{base_url}/readyz", timeout=30)
    assert models.status_code == 200 and {"mux-2m", "mux-5m"} <= {m["id"] for m in models.json()["data"]}
    assert ready.status_code == 200, ready.text
    assert running_replicas() == 0  # listing the models woke nothing

    first = chat(base_url)  # waits for the replica Serve starts for it
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] is not None
    assert running_replicas() >= 1
    started = wait_until(lambda: [s for s in asyncio.run(backend.stats()) if s.get("cold_start_waits")],
                         timeout_s=10, what="the replica's stats to show the request's cold-start wait")
    assert started[0]["replica_start_seconds"] > 0 and started[0]["cold_start_wait_seconds"] > 0

    stop = threading.Event()

    def closed_loop() -> None:  # 4 clients against a target of 1 request per replica
        while not stop.is_set():
            assert chat(base_url, max_tokens=32).status_code == 200

    with concurrent.futures.ThreadPoolExecutor(4) as clients:
        load = [clients.submit(closed_loop) for _ in range(4)]
        try:
            wait_until(lambda: running_replicas() == 2, timeout_s=40, every_s=0.2,
                       what="a second replica for a queue beyond the target")
        finally:
            stop.set()
        for done in load:
            done.result()

    wait_until(lambda: running_replicas() == 0, timeout_s=40, every_s=0.2,
               what="the pool to scale back to zero without requests")


def test_a_cold_start_longer_than_the_first_token_timeout_is_a_503_with_retry_after(pool):
    _, base_url, hurried_url = pool
    wait_until(lambda: running_replicas() == 0, timeout_s=40, every_s=0.2, what="zero replicas")
    answer = chat(hurried_url)
    assert answer.status_code == 503
    assert float(answer.headers["retry-after"]) > 0
    assert answer.json()["error"]["code"] and "no token within" in answer.json()["error"]["message"]
