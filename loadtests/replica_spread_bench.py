"""A hot model on a second replica (issue 20): the flood of loadtests/contention_bench.py (team A
floods one hot zoo model, a closed loop of `--a-clients` requests always in flight; team B sends
`--b-rate` requests/s over the eleven other models) on muxgate's Ray Serve pool of two replicas,
with the request router's hot-model spreading on (PoolOptions.spread_hot_models, the default) and
off, from the same start: the hot model loaded on one replica.

`--a-clients` exceeds what one replica's batch admits at once (a 256-token KV reserve: ~9 rows of
this prompt), so requests queue there and the replica counts as hot. Each replica's device budget
is `--budget-fraction` of the twelve models' bytes (host tier: all of them), as in the contention
bench. Reported per mode: `a_rps` (A's completed requests/s), `b_p99_s` (B's p99 latency),
`past_deadline`, and `a_by_replica` (how many of A's requests each replica served); then
`a_throughput_ratio` (on / off) and `b_p99_ratio` (on / off). Each mode runs in a fresh process.
Prints one JSON line.
Usage: python -m loadtests.replica_spread_bench --json [--seconds 20] [--a-clients 16] [--b-rate 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time

from loadtests.contention_bench import HOT, Phase, add_flood_arguments, make_flood, replica_totals

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPLICAS = 2


def main() -> None:
    parser = argparse.ArgumentParser()
    add_flood_arguments(parser, a_clients=16,
                        budget_help="each replica's device budget, as a fraction of the twelve models' bytes")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    parser.add_argument("--mode", choices=("both", "on", "off"), default="both",
                        help="on/off: one mode in this process; both: each in a fresh process (a process's Serve "
                        "router for the pool outlives a redeploy, its spreading setting with it)")
    args, _ = parser.parse_known_args()
    if args.mode == "both":
        return print_both(sys.argv[1:], args.json)

    import ray
    from ray import serve

    from workers.serve_app import APP_NAME, PoolOptions, deploy_pool, replica_stats

    flood = make_flood(args)
    specs, sizes, budget, arrivals = flood.specs, flood.sizes, flood.budget, flood.arrivals

    def request(team: str):
        return flood.request("spread", team)

    async def one_mode(spread: bool) -> dict:
        options = PoolOptions(replicas=REPLICAS, num_cpus=args.num_cpus, torch_threads=1, device_budget_bytes=budget,
                              host_budget_bytes=sum(sizes.values()), kv_reserve_tokens=256, prefix_cache_bytes=0,
                              load_timeout_s=args.deadline_s, spread_hot_models=spread)
        handle = await asyncio.to_thread(deploy_pool, specs, options)
        generate = handle.options(stream=True).generate
        a_by_replica: collections.Counter[str] = collections.Counter()

        async def call(model, team):
            last = None
            async for last in generate.remote(model, request(team)):
                pass
            if team == "A" and last is not None:
                a_by_replica[last.replica] += 1

        async def mine() -> list[dict]:  # this process's own Ray: only this mode's replicas
            return await replica_stats()

        try:
            await call(HOT, "A")  # the hot model resident on one replica when the flood starts
            a_by_replica.clear()
            for _ in range(100):  # its stats reach the router (every 0.5 s)
                if sum(HOT in s["resident"] for s in await mine()) == 1:
                    break
                await asyncio.sleep(0.1)
            out = await Phase(call, args.seconds, args.deadline_s).run(args.a_clients, arrivals)
            await asyncio.sleep(1.0)  # replicas post their stats every 0.5 s
            stats = await mine()
            out.update(replica_totals(stats), a_by_replica=sorted(a_by_replica.values(), reverse=True),
                       past_deadline=out.get("a_missed", 0) + out.get("b_missed", 0))
            return out
        finally:
            await asyncio.to_thread(serve.delete, APP_NAME)

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    result = {"bench": "replica_spread", "replicas": REPLICAS, "hot_model": HOT, "seconds": args.seconds,
              "a_clients": args.a_clients, "b_rate": args.b_rate, "max_tokens": args.max_tokens,
              "device_budget_bytes": budget, "b_requests": len(arrivals), "num_cpus_per_replica": args.num_cpus,
              "machine_cpus": os.cpu_count()}
    try:
        result[f"spread_{args.mode}"] = asyncio.run(one_mode(args.mode == "on"))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(result))


def print_both(argv: list[str], one_line: bool) -> None:
    """Each mode in its own process, one after the other, then the ratios on / off."""
    started = time.perf_counter()
    result: dict = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-m", "loadtests.replica_spread_bench", *argv, "--mode", mode],
                             capture_output=True, text=True, check=True).stdout
        result.update(json.loads(out.strip().splitlines()[-1]))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    on, off = result["spread_on"], result["spread_off"]
    result["a_throughput_ratio"] = round(on["a_rps"] / off["a_rps"], 3) if off.get("a_rps") else None
    result["b_p99_ratio"] = round(on["b_p99_s"] / off["b_p99_s"], 3) if on.get("b_p99_s") and off.get("b_p99_s") else None
    print(json.dumps(result) if one_line else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
