"""What recording `auto` requests for the router to learn from costs the gateway (issue 18):
the same gateway (a classifier route over two models of a fake instant upstream, SQLite store,
journal on) with the recorder detached (`off`), recording features only (`features`), and
recording features with the prompt and answer (`text`, a team with store_prompts), side by side;
with `--adaptive`, also an adaptive route (`adapt: true`: its decision hands its features over,
so the recorder featurises nothing) with the recorder detached (`adaptive_off`) and recording.

The recorder's work is a note at routing time and, after the answer, featurising the request and
one store write in the background: nothing new is awaited before the answer, so it shows as
server CPU per request more than as latency. Each system is its own `muxgate`-equivalent process
(uvicorn, in-process backend); load points are closed-loop concurrency 1 and 8 and an open-loop
rate, each split into slices taken in turn (off, features, text, off, ...). Reports p50/p99 per
system and point, the server's CPU microseconds per request, and ratios against `off`.
Usage: python -m loadtests.learning_overhead --json [--seconds 6] [--slices 3] [--rate 200] [--adaptive]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from loadtests import gateway_overhead as go

KEY = "mg-bench-0123456789abcdef0123456789"
PROMPT = ("Our quarterly report shows revenue up 12% but margins down. Explain in two sentences what could cause "
          "this and which figure the board should look at first.")
BODY = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6}
SYSTEMS = ("off", "features", "text")
ADAPTIVE_SYSTEMS = ("adaptive_off", "adaptive")


def config_for(system: str, upstream_url: str, tmp: Path, port: int) -> Path:
    policy = tmp / f"routing-{system}.yaml"
    route = {"large_share": 0.3, "adapt": True} if system.startswith("adaptive") else {"threshold": 0.5}
    policy.write_text(yaml.safe_dump({"version": 1, "tiers": {"small": ["fake-s"], "large": ["fake-l"]},
                                      "routes": {"default": route}}))
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port},
        "admin": {"key": "mg-bench-admin-0123456789abcdef"},
        "keys": [{"team": "bench", "name": "bench", "key": KEY}],
        "store": {"url": f"sqlite:///{tmp / f'{system}.db'}"},
        "models": [{"name": n, "upstream": {"base_url": upstream_url, "model": "fake"}} for n in ("fake-s", "fake-l")],
        "teams": [{"id": "bench", "store_prompts": system == "text"}],
        "routing": {"default_model": "fake-s", "policy_file": str(policy)},
    }
    path = tmp / f"muxgate-{system}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve(config_path: str, record: bool) -> None:
    """One system's gateway (run as a subprocess of the benchmark)."""
    import uvicorn

    from gateway.http.app import create_app
    from gateway.config import load_config
    from gateway.server import make_backend

    config = load_config(config_path)
    app = create_app(config, make_backend(config, use_ray=False))
    if not record:  # the same gateway with its recorder detached: the only difference measured
        completions = app.state.gateway.completions
        completions.hooks.remove(completions.recorder.finished)
        completions.recorder = None
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="warning")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def measure(targets: dict, seconds: float, slices: int, rate: float) -> dict:
    import aiohttp

    go.BODY = BODY  # gateway_overhead's load generators send this body
    points = [("c", 1), ("c", 8), ("r", rate)]
    results: dict = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        for url, headers, _ in targets.values():
            for _ in range(100):
                await go.timed_post(session, url, headers, BODY, [])
        for kind, value in points:
            latencies = {n: [] for n in targets}
            errors = dict.fromkeys(targets, 0)
            cpu = dict.fromkeys(targets, 0.0)
            for _ in range(slices):
                for name, (url, headers, pid) in targets.items():
                    before = cpu_seconds(pid)
                    if kind == "c":
                        lat, err = await go.closed_loop(session, url, headers, int(value), seconds / slices, False)
                    else:
                        lat, err = await go.open_loop(session, url, headers, value, seconds / slices)
                    await asyncio.sleep(0.3)  # the background records of this slice finish in its CPU count
                    cpu[name] += cpu_seconds(pid) - before
                    latencies[name] += lat
                    errors[name] += err
            point = {}
            for name in targets:
                point[name] = {**go.summarize(latencies[name], errors[name]),
                               "cpu_us_per_request": round(1e6 * cpu[name] / max(1, len(latencies[name])), 1)}
            for name in targets:
                base = "adaptive_off" if name.startswith("adaptive") else "off"
                if name != base and point[base]["p50_ms"] and point[name]["p50_ms"]:
                    point[name]["p50_ratio"] = round(point[name]["p50_ms"] / point[base]["p50_ms"], 3)
                    point[name]["p99_ratio"] = round(point[name]["p99_ms"] / point[base]["p99_ms"], 3)
                    point[name]["cpu_ratio"] = round(point[name]["cpu_us_per_request"]
                                                     / point[base]["cpu_us_per_request"], 3)
            results[f"{kind}{int(value)}"] = point
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=6.0, help="per load point and system")
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--adaptive", action="store_true", help="also an adaptive route, without and with recording")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "RECORD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1] == "1")
    procs = []
    with tempfile.TemporaryDirectory(prefix="mg-learning-bench-") as tmp:
        try:
            up_port = go.free_port()
            procs.append(go.start([sys.executable, "-m", "loadtests.fake_upstream", "--port", str(up_port)]))
            upstream = f"http://127.0.0.1:{up_port}/v1"
            go.wait_http(upstream + "/models")
            targets = {}
            for system in SYSTEMS + (ADAPTIVE_SYSTEMS if args.adaptive else ()):
                port = go.free_port()
                config = config_for(system, upstream, Path(tmp), port)
                proc = go.start([sys.executable, "-m", "loadtests.learning_overhead", "--serve", str(config),
                                 "0" if system.endswith("off") else "1"])
                procs.append(proc)
                base = f"http://127.0.0.1:{port}"
                go.wait_http(base + "/healthz")
                targets[system] = (base + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}, proc.pid)
            started = time.time()
            results = asyncio.run(measure(targets, args.seconds, args.slices, args.rate))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    summary = {"bench": "learning_overhead", "seconds": args.seconds, "slices": args.slices,
               "wall_s": round(time.time() - started, 1), "cpus": os.cpu_count(), "points": results}
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
