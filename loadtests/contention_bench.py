"""Two teams under contention on one replica (issue 20): team A floods one hot model at saturation
(a closed loop of `--a-clients` requests always in flight), team B sends `--b-rate` requests/s
(Poisson) spread over the eleven other zoo models of loadtests/mux_trace.py, cold at first.
The replica's device budget is a third of the twelve models' bytes by default (host tier: all
of them; `--budget-fraction`), so B's models are swapped in and out beside A's; a budget too
small for A's model and B's largest at once (`--budget-fraction 0.2`) makes A's model take turns.

Each system runs three phases of `--seconds` each, from the same start (A's model loaded): A
alone, B alone, both. Reported: `b_p99_ratio` (B's p99 latency with A flooding / B's p99 alone;
goal <= 2), `a_throughput_ratio` (A's completed requests/s with B / alone; goal >= 0.9) and
`past_deadline` (requests not answered within `--deadline-s`, failures included; goal 0).
Systems (`--systems`, default `inprocess,serve`):
- `inprocess`: muxgate's ModelPool in this process (the class a pool replica runs, no Ray in its
  path); it also reports each phase's CPU seconds per second and, from them, the floor one process
  puts under `a_throughput_ratio` (`a_throughput_floor_one_process`: A's and B's steps share one GIL);
  every system reports each phase's `machine_cpu_busy` (the share of all cores busy, every process
  counted: where it nears 1, the machine itself is the floor);
- `ray`: muxgate's Ray Serve pool as `muxgate serve` deploys it (`deploy_pool`, `--replicas`, one
  CPU each, the model-aware request router), on a local Ray;
- `serve`: Ray Serve's `@serve.multiplexed` baseline (loadtests/mux_trace.serve_multiplexed_app,
  `--serve-models` per replica, its byte bookkeeping for OOMs) on the same local Ray.
Prints one JSON line (Ray's own log lines may precede it on stdout).
Usage: python -m loadtests.contention_bench --json [--seconds 20] [--a-clients 4] [--b-rate 1]
       [--systems inprocess,ray,serve] [--replicas 2] [--budget-fraction 0.28]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.mux_trace import TRACE_MODELS, serve_multiplexed_app

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HOT = "mux-10m"
COLD = [m for m in TRACE_MODELS if m != HOT]


class Phase:
    """One phase's clients against `call(model, team)`; latencies and misses per team."""

    def __init__(self, call, seconds: float, deadline_s: float):
        self.call, self.seconds, self.deadline_s = call, seconds, deadline_s
        self.latencies: dict[str, list[float]] = {"A": [], "B": []}
        self.missed: dict[str, int] = {"A": 0, "B": 0}
        self.errors: set[str] = set()

    async def one(self, model: str, team: str) -> None:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(self.call(model, team), self.deadline_s)
            self.latencies[team].append(time.perf_counter() - t0)
        except Exception as exc:  # a failure is a request not answered by its deadline
            self.missed[team] += 1
            self.errors.add(type(exc).__name__)

    async def flood(self, end: float) -> None:
        while time.perf_counter() < end:
            await self.one(HOT, "A")

    async def trickle(self, arrivals: list[tuple[float, str]], start: float) -> None:
        async def at(offset, model):
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            await self.one(model, "B")

        await asyncio.gather(*[at(o, m) for o, m in arrivals])

    async def run(self, a_clients: int, arrivals: list[tuple[float, str]] | None) -> dict:
        start = time.perf_counter()
        end = start + self.seconds
        tasks = [self.flood(end) for _ in range(a_clients)]
        if arrivals is not None:
            tasks.append(self.trickle(arrivals, start))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        out = {"errors": sorted(self.errors)}
        if a_clients:
            out.update(a_completed=len(self.latencies["A"]), a_rps=round(len(self.latencies["A"]) / wall, 3),
                       a_missed=self.missed["A"])
        if arrivals is not None:
            b = sorted(self.latencies["B"])
            out.update(b_completed=len(b), b_missed=self.missed["B"],
                       b_p50_s=round(statistics.median(b), 4) if b else None,
                       b_p99_s=round(b[min(len(b) - 1, int(0.99 * len(b)))], 4) if b else None)
        return out


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of all cores since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def b_arrivals(seconds: float, rate: float, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append((t, rng.choice(COLD)))


async def three_phases(make_call, args, arrivals) -> dict:
    """A alone, B alone, both; each from a fresh system with A's model loaded."""
    phases = {}
    for name, a_clients, trace in (("a_alone", args.a_clients, None), ("b_alone", 0, arrivals),
                                   ("together", args.a_clients, arrivals)):
        call, close, stats = await make_call()
        try:
            await call(HOT, "A")  # A's model is resident when each phase starts
            cpu0, t0, machine0 = time.process_time(), time.perf_counter(), machine_cpu()
            phases[name] = await Phase(call, args.seconds, args.deadline_s).run(a_clients, trace)
            cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - t0)
            machine1 = machine_cpu()
            phases[name].update(await stats())
            if machine0 and machine1:  # every process here (replicas, Ray, other load): the machine's own floor
                busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
                phases[name]["machine_cpu_busy"] = round(busy / total, 3) if total else None
            if phases[name].pop("in_process", False):  # the system runs in this process: its CPU is ours
                phases[name]["process_cpu_share"] = round(cpu_share, 3)  # CPU seconds per second, all threads
        finally:
            await close()
    both = phases["together"]
    b_alone, a_alone = phases["b_alone"]["b_p99_s"], phases["a_alone"]["a_rps"]
    return {
        **phases,
        "b_p99_ratio": round(both["b_p99_s"] / b_alone, 3) if both.get("b_p99_s") and b_alone else None,
        "a_throughput_ratio": round(both["a_rps"] / a_alone, 3) if a_alone else None,
        "past_deadline": both.get("a_missed", 0) + both.get("b_missed", 0),
    }


def one_process_floor(system: dict) -> dict:
    """The most A can keep when A's and B's work share one Python process (the in-process pool; so
    does one replica): their steps take turns holding the GIL. A alone saturates it (A's closed loop
    takes ~1 CPU second per second, `process_cpu_share`), B's open-loop work is all done, so A keeps
    what B leaves: 1 - b_cpu / a_cpu, each measured alone in this run. None when A alone does not
    saturate the process (then there is room for both)."""
    a_cpu = system["a_alone"].get("process_cpu_share")
    b_cpu = system["b_alone"].get("process_cpu_share")
    if a_cpu is None or b_cpu is None:
        return {}
    floor = round(max(0.0, 1 - b_cpu / a_cpu), 3) if a_cpu >= 0.9 else None
    return {"a_throughput_floor_one_process": floor, "together_cpu_share": system["together"].get("process_cpu_share")}


def add_flood_arguments(parser: argparse.ArgumentParser, a_clients: int, budget_help: str) -> None:
    """The flood's knobs, shared with loadtests/replica_spread_bench.py."""
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--a-clients", type=int, default=a_clients, help="team A's requests always in flight")
    parser.add_argument("--b-rate", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--deadline-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-fraction", type=float, default=1 / 3, help=budget_help)
    parser.add_argument("--zoo", default="var/zoo")


@dataclass(frozen=True)
class Flood:
    """The zoo's twelve models, each one's reservation, the device budget and B's arrivals."""

    specs: list
    sizes: dict[str, int]
    budget: int
    arrivals: list[tuple[float, str]]
    max_tokens: int

    def request(self, name: str, team: str):
        from workers.types import GenerationRequest

        return GenerationRequest(f"{name}-{team}", prompt="Summarise the quarterly report in one line",
                                 max_tokens=self.max_tokens, temperature=0.0, team=team)


def make_flood(args) -> Flood:
    from workers.dtypes import default_dtype
    from workers.footprint import predict_footprint
    from workers.types import ModelSpec
    from workers.zoo import build_zoo

    build_zoo(Path(args.zoo), TRACE_MODELS, progress=False)
    specs = [ModelSpec(m, str(Path(args.zoo) / m)) for m in TRACE_MODELS]
    # what a replica reserves for each: weights + a 256-token KV reserve, no prefix cache
    sizes = {s.name: predict_footprint(s.name, s.path, default_dtype("cpu"), 256).total for s in specs}
    return Flood(specs, sizes, int(sum(sizes.values()) * args.budget_fraction),
                 b_arrivals(args.seconds, args.b_rate, args.seed), args.max_tokens)


def replica_totals(stats: list[dict]) -> dict:
    """Pool replicas' stats (from their board) summed over the replicas."""
    total = lambda key: sum(s[key] for s in stats)  # noqa: E731
    return {"replicas": len(stats), "loads": {k: sum(s["loads"][k] for s in stats) for k in ("cold", "warm")},
            "evictions": total("evictions"), "pauses": total("pauses"), "queue_refusals": total("queue_refusals"),
            "hot_model_on_replicas": sum(HOT in s["resident"] for s in stats)}


def main() -> None:
    parser = argparse.ArgumentParser()
    add_flood_arguments(parser, a_clients=4,
                        budget_help="the replica's device budget, as a fraction of the twelve models' bytes")
    parser.add_argument("--serve-models", type=int, default=3, help="Serve's max_num_models_per_replica")
    parser.add_argument("--systems", default="inprocess,serve",
                        help="comma-separated: inprocess (muxgate's ModelPool in this process), ray (muxgate's Ray "
                        "Serve pool, --replicas), serve (Ray Serve @serve.multiplexed baseline)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of muxgate's Ray pool (--systems ray)")
    parser.add_argument("--no-serve", action="store_true", help="drop `serve` from --systems")
    args = parser.parse_args()
    if args.no_serve:
        args.systems = ",".join(x for x in args.systems.split(",") if x.strip() != "serve")

    import torch

    from workers.pool import ModelPool

    torch.set_num_threads(1)
    flood = make_flood(args)
    specs, sizes, budget, arrivals = flood.specs, flood.sizes, flood.budget, flood.arrivals
    paths = {spec.name: spec.path for spec in specs}

    def request(team: str):
        return flood.request("contention", team)

    async def muxgate():
        pool = ModelPool(specs, torch_threads=1, device_budget_bytes=budget, host_budget_bytes=sum(sizes.values()),
                         kv_reserve_tokens=256, prefix_cache_bytes=0, load_timeout_s=args.deadline_s)
        pool.warm_up()

        async def call(model, team):
            async for _ in pool.generate(model, request(team)):
                pass

        async def close():
            await asyncio.to_thread(pool.close)

        async def stats():
            s = pool.stats()
            return {"in_process": True, **{k: s[k] for k in ("loads", "evictions", "pauses", "paused_seconds",
                                                                  "queue_refusals")}}

        return call, close, stats

    def muxgate_ray():
        """muxgate's Ray Serve pool (`deploy_pool`: PoolReplica replicas, the model-aware request router),
        `--replicas` of them, each its own process with one CPU, as `muxgate serve` deploys it."""
        from ray import serve

        from workers.serve_app import APP_NAME, PoolOptions, deploy_pool, replica_stats

        options = PoolOptions(replicas=args.replicas, num_cpus=1, torch_threads=1, device_budget_bytes=budget,
                              host_budget_bytes=sum(sizes.values()), kv_reserve_tokens=256, prefix_cache_bytes=0,
                              load_timeout_s=args.deadline_s)
        earlier: set[str] = set()  # replicas of earlier phases (their stats stay on the board a while)

        async def make():
            handle = await asyncio.to_thread(deploy_pool, specs, options)
            generate = handle.options(stream=True).generate

            async def call(model, team):
                async for _ in generate.remote(model, request(team)):
                    pass

            async def close():
                earlier.update(s["replica"] for s in await replica_stats())
                await asyncio.to_thread(serve.delete, APP_NAME)

            async def stats():
                await asyncio.sleep(1.0)  # replicas post their stats every 0.5 s
                return replica_totals([s for s in await replica_stats() if s["replica"] not in earlier])

            return call, close, stats

        return make

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - {"inprocess", "ray", "serve"}
    if unknown:
        parser.error(f"unknown --systems: {', '.join(sorted(unknown))}")
    result = {"bench": "contention", "hot_model": HOT, "cold_models": len(COLD), "seconds": args.seconds,
              "a_clients": args.a_clients, "b_rate": args.b_rate, "max_tokens": args.max_tokens,
              "device_budget_bytes": budget, "b_requests": len(arrivals)}
    if "inprocess" in systems:
        inprocess = asyncio.run(three_phases(muxgate, args, arrivals))
        result["muxgate"] = {"backend": "in-process ModelPool (no Ray)", **inprocess,
                             **one_process_floor(inprocess)}
    if "ray" in systems or "serve" in systems:
        import ray
        from ray import serve

        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            if "ray" in systems:
                result["muxgate_ray"] = {"backend": f"muxgate Ray Serve pool, {args.replicas} replica(s)",
                                         "replicas": args.replicas,
                                         **asyncio.run(three_phases(muxgate_ray(), args, arrivals))}
            if "serve" in systems:
                runs = iter(range(3))

                async def serve_side():
                    name = f"contention{next(runs)}"
                    handle = await asyncio.to_thread(serve.run, serve_multiplexed_app(paths, args.serve_models, budget, sizes),
                                                     name=name, route_prefix=None)

                    async def call(model, team):
                        await handle.options(multiplexed_model_id=model).generate.remote(request(team))

                    async def close():
                        await asyncio.to_thread(serve.delete, name)

                    async def stats():
                        return await handle.stats.remote()

                    return call, close, stats

                result["serve_multiplexed"] = {"max_num_models_per_replica": args.serve_models,
                                               **asyncio.run(three_phases(serve_side, args, arrivals))}
        finally:
            serve.shutdown()
            ray.shutdown()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
