"""Scaling with demand (issue 20 item 4): what a cold start costs, and the replica count under a burst.

One run, one local Ray, the gateway in this process in front of the pool (the same create_app +
RayServeBackend as `muxgate serve`) with `pool.autoscaling.min_replicas: 0`:

1. cold: a request at 0 replicas; its time to first token (TTFT) covers Serve starting a replica,
   the replica's constructor, the model's cold load and the first token;
2. warm: `--warm` requests one after another on that replica (model resident): their TTFT;
3. burst: `--clients` closed-loop clients for `--burst-s`, then none; the replicas running and
   starting (serve.status()) sampled every 0.25 s until none runs: the timeline of changes;
4. cold again: a request at 0 replicas after the burst (a second cold sample).

The replicas' own numbers come from their stats (ColdStart in workers/serve_app.py):
replica_start_seconds (constructor, warm-up included) and cold_start_wait_seconds (from the gateway
sending a request to the replica receiving it). Prints one JSON line.

    .venv/bin/python -m loadtests.scale_bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

import httpx

KEY = "mg-scale-bench-0123456789abcdef"


def replica_counts() -> tuple[int, int]:
    """(running, starting) replicas of the pool, from serve.status()."""
    from ray import serve

    app = serve.status().applications.get("pool")
    if app is None or "ModelPool" not in app.deployments:
        return 0, 0
    states = app.deployments["ModelPool"].replica_states
    return states.get("RUNNING", 0), states.get("STARTING", 0)


def running_replicas() -> int:
    return replica_counts()[0]


def bench_config(args) -> dict:
    return {
        "version": 1,
        "server": {"default_max_tokens": args.max_tokens, "stream_first_token_timeout_s": 300},
        "keys": [{"team": "bench", "key": KEY}],
        "store": {"url": None},
        "zoo": {"dir": args.zoo, "build_on_start": False},
        "models": [{"name": args.model, "zoo": True}],
        "routing": {"default_model": args.model},
        "pool": {"backend": "ray", "num_cpus": args.num_cpus, "torch_threads": 1, "kv_reserve_tokens": 512,
                 "autoscaling": {"min_replicas": 0, "max_replicas": args.max_replicas,
                                 "target_per_replica": args.target, "upscale_delay_s": args.upscale_delay_s,
                                 "downscale_delay_s": args.downscale_delay_s,
                                 "downscale_to_zero_delay_s": args.downscale_delay_s,
                                 "look_back_period_s": 2.0, "metrics_interval_s": 0.25}},
    }


async def ttft(client: httpx.AsyncClient, base_url: str, model: str, max_tokens: int) -> float:
    """Seconds from sending a streamed chat request to its first content event."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Say something."}]}
    started = time.perf_counter()
    first = None
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {KEY}"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: ") and '"content"' in line:
                first = time.perf_counter() - started
    return first


async def closed_loop(client, base_url, model, max_tokens, until: float, done: list) -> None:
    while time.monotonic() < until:
        await ttft(client, base_url, model, max_tokens)
        done.append(1)


def wait_for(predicate, timeout_s: float, every_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


class Timeline:
    """The replica counts, sampled in a thread; kept as [seconds since start, running, starting] changes
    (a replica counts as starting from Serve's decision until its constructor returns)."""

    def __init__(self):
        self.changes: list[list[float]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        counts = list(replica_counts())
        if not self.changes or self.changes[-1][1:] != counts:
            self.changes.append([round(time.monotonic() - self.started, 2), *counts])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()  # the count the burst ended at


async def run(args) -> dict:
    from gateway.config import parse_config
    from gateway.http.app import create_app
    from gateway.server import make_backend
    from loadtests.chaos_ray import KeepPool, ThreadGateway
    from workers.serve_app import shutdown_pool
    from workers.zoo import build_zoo

    build_zoo(Path(args.zoo), [args.model], progress=False)
    config = parse_config(bench_config(args))
    backend = await asyncio.to_thread(make_backend, config, True)
    gw = ThreadGateway(create_app(config, KeepPool(backend)), store_url="").start()
    result: dict = {"bench": "scale_bench", "model": args.model, "target_per_replica": args.target,
                    "max_replicas": args.max_replicas, "clients": args.clients, "burst_s": args.burst_s,
                    "upscale_delay_s": args.upscale_delay_s, "downscale_delay_s": args.downscale_delay_s}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
            result["replicas_at_start"] = running_replicas()
            result["cold_ttft_s"] = [round(await ttft(client, gw.base_url, args.model, 4), 3)]
            warm = [await ttft(client, gw.base_url, args.model, 4) for _ in range(args.warm)]
            result["warm_ttft_s"] = {"median": round(statistics.median(warm), 4), "max": round(max(warm), 4)}
            first_replica = [s for s in await backend.stats() if s.get("cold_start_waits")]
            if first_replica:
                s = first_replica[0]
                result["replica_start_seconds"] = s["replica_start_seconds"]
                result["cold_start_wait_seconds"] = s["cold_start_max_wait_seconds"]
                result["cold_load_seconds"] = round(s["load_seconds"].get("cold", 0.0), 3)
            with Timeline() as timeline:
                done: list = []
                until = time.monotonic() + args.burst_s
                await asyncio.gather(*(closed_loop(client, gw.base_url, args.model, args.max_tokens, until, done)
                                       for _ in range(args.clients)))
                burst_ended = round(time.monotonic() - timeline.started, 2)
                back_to_zero = await asyncio.to_thread(wait_for, lambda: running_replicas() == 0, args.settle_s)
            result["burst_requests"] = len(done)
            result["burst_ended_s"] = burst_ended
            result["replica_timeline"] = timeline.changes
            result["peak_replicas"] = max(running for _, running, _ in timeline.changes)
            result["back_to_zero"] = back_to_zero
            if back_to_zero:
                result["cold_ttft_s"].append(round(await ttft(client, gw.base_url, args.model, 4), 3))
            result["replica_start_seconds_all"] = sorted(s["replica_start_seconds"] for s in await backend.stats()
                                                         if "replica_start_seconds" in s)
    finally:
        await asyncio.to_thread(gw.stop)
        await asyncio.to_thread(shutdown_pool)
    result["cold_over_warm"] = round(statistics.median(result["cold_ttft_s"]) / result["warm_ttft_s"]["median"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mux-50m")
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--warm", type=int, default=10, help="warm requests, one after another")
    parser.add_argument("--clients", type=int, default=6, help="closed-loop clients in the burst")
    parser.add_argument("--burst-s", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=64, help="per burst request")
    parser.add_argument("--target", type=float, default=2.0, help="pool.autoscaling.target_per_replica")
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--num-cpus", type=float, default=0.5, help="Ray CPUs per replica")
    parser.add_argument("--upscale-delay-s", type=float, default=1.0)
    parser.add_argument("--downscale-delay-s", type=float, default=3.0, help="also the to-zero delay")
    parser.add_argument("--settle-s", type=float, default=60.0, help="longest wait for 0 replicas after the burst")
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
