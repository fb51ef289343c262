"""CPU per upstream call: muxgate's HTTP client (gateway/upstreams/http_client.py) against aiohttp's pooled
client, both sending the gateway's streamed chat call to the fake upstream and reading its SSE
answer whole, sequentially, in the same process, in alternating rounds.

Run: python -m loadtests.upstream_client_bench --json [--calls 3000 --rounds 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from loadtests.gateway_overhead import free_port, start, wait_http

BODY = {"model": "fake", "stream": True, "stream_options": {"include_usage": True}, "temperature": 1.0,
        "top_p": 1.0, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _muxgate_call(client, body: bytes) -> int:
    response = await client.request("POST", "/chat/completions", body)
    try:
        return len(await response.read())
    finally:
        response.release()


async def _aiohttp_call(session, url: str, body: bytes) -> int:
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
        return sum([len(piece) async for piece in response.content.iter_any()])


async def measure(base_url: str, calls: int, rounds: int) -> dict:
    import aiohttp

    from gateway.upstreams.http_client import HTTPClient

    body = json.dumps(BODY).encode()
    client = HTTPClient(base_url)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30))
    systems = {"muxgate_client": lambda: _muxgate_call(client, body),
               "aiohttp": lambda: _aiohttp_call(session, base_url + "/chat/completions", body)}
    per_call: dict[str, list[float]] = {name: [] for name in systems}
    try:
        for name, call in systems.items():  # warm up: connections made, code paths hot
            assert await call() > 0, name
            for _ in range(200):
                await call()
        for round_ in range(rounds):
            order = list(systems) if round_ % 2 == 0 else list(systems)[::-1]
            for name in order:
                cpu, wall = _cpu(), time.perf_counter()
                for _ in range(calls):
                    await systems[name]()
                per_call[name].append(((_cpu() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6))
    finally:
        await client.close()
        await session.close()
    out = {name: {"cpu_us_per_call": round(statistics.median(c for c, _ in rows), 1),
                  "wall_us_per_call": round(statistics.median(w for _, w in rows), 1)}
           for name, rows in per_call.items()}
    out["cpu_ratio_muxgate_vs_aiohttp"] = round(out["muxgate_client"]["cpu_us_per_call"]
                                                / out["aiohttp"]["cpu_us_per_call"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per round and client")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (medians are reported)")
    args = parser.parse_args()
    port = free_port()
    upstream = start([sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port)])
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_http(base_url + "/models")
        import uvloop

        result = uvloop.run(measure(base_url, args.calls, args.rounds))
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
    out = {"bench": "upstream_client", "calls_per_round": args.calls, "rounds": args.rounds, **result}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
