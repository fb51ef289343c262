"""Replay a seeded synthetic trace against a running muxgate and print one JSON summary.

Arrivals are Poisson or bursty (on/off Poisson), model popularity is Zipf over the models the
gateway lists, and a share of the traffic is agent chains: 3-10 dependent calls in one session
(`x-session-id`), each step resending the conversation so far plus a new turn.
Usage: python -m loadtests.trace_replay --url http://127.0.0.1:8000 --key mg-... --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

from loadtests.prompts import load_prompts, zipf_weights


def arrivals(rng: random.Random, n: int, rate: float, bursty: bool) -> list[float]:
    t, out = 0.0, []
    while len(out) < n:
        if bursty and rng.random() < 0.1:  # an idle gap, then a burst at 5x the rate
            t += rng.expovariate(rate / 10)
            for _ in range(rng.randint(5, 20)):
                t += rng.expovariate(rate * 5)
                out.append(t)
        else:
            t += rng.expovariate(rate)
            out.append(t)
    return out[:n]


async def run(args) -> dict:
    import aiohttp

    rng = random.Random(args.seed)
    prompts = load_prompts()
    headers = {"authorization": f"Bearer {args.key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async with session.get(args.url + "/v1/models", headers=headers) as resp:
            models = [m["id"] for m in (await resp.json())["data"] if m["id"] != "auto"]
        weights = zipf_weights(len(models))
        results: list[dict] = []

        async def call(model: str, messages: list[dict], session_id: str | None) -> tuple[str, dict]:
            body = {"model": model, "messages": messages, "max_tokens": args.max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}}
            h = {**headers, **({"x-session-id": session_id} if session_id else {})}
            t0 = time.perf_counter()
            first = None
            text = []
            status = 0
            try:
                async with session.post(args.url + "/v1/chat/completions", json=body, headers=h) as resp:
                    status = resp.status
                    async for raw in resp.content:
                        line = raw.decode().strip()
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        for choice in event.get("choices") or []:
                            if (choice.get("delta") or {}).get("content"):
                                first = first or time.perf_counter()
                                text.append(choice["delta"]["content"])
            except Exception:
                status = -1
            rec = {"status": status, "latency_s": time.perf_counter() - t0,
                   "ttft_s": (first - t0) if first else None, "model": model}
            results.append(rec)
            return "".join(text), rec

        async def single(delay: float):
            await asyncio.sleep(delay)
            model = rng.choices(models, weights)[0] if args.model == "zipf" else args.model
            await call(model, [{"role": "user", "content": rng.choice(prompts)}], None)

        async def chain(delay: float, idx: int):
            await asyncio.sleep(delay)
            model = rng.choices(models, weights)[0] if args.model == "zipf" else args.model
            messages = [{"role": "user", "content": rng.choice(prompts)}]
            for step in range(rng.randint(3, 10)):  # each step depends on the previous answer
                answer, rec = await call(model, messages, f"chain-{args.seed}-{idx}")
                rec["chain_step"] = step
                messages += [{"role": "assistant", "content": answer},
                             {"role": "user", "content": rng.choice(prompts)[:200]}]

        times = arrivals(rng, args.requests, args.rate, args.bursty)
        tasks = [chain(t, i) if rng.random() < args.chain_share else single(t) for i, t in enumerate(times)]
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - started

    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency_s"] for r in ok)
    ttft = sorted(r["ttft_s"] for r in ok if r["ttft_s"] is not None)

    def q(xs, p):
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 4) if xs else None

    return {"bench": "trace_replay", "seed": args.seed, "arrivals": "bursty" if args.bursty else "poisson",
            "requests": len(results), "ok": len(ok), "limited_429": sum(r["status"] == 429 for r in results),
            "failed": sum(r["status"] not in (200, 429) for r in results), "wall_s": round(wall, 2),
            "throughput_rps": round(len(ok) / wall, 3), "latency_p50_s": q(lat, 0.5), "latency_p99_s": q(lat, 0.99),
            "ttft_p50_s": q(ttft, 0.5), "ttft_p99_s": q(ttft, 0.99),
            "chain_calls": sum("chain_step" in r for r in results),
            "median_latency_by_model": {m: round(statistics.median([r["latency_s"] for r in ok if r["model"] == m]), 4)
                                        for m in sorted({r["model"] for r in ok})}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--requests", type=int, default=60, help="trace entries (a chain counts once)")
    parser.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second")
    parser.add_argument("--bursty", action="store_true")
    parser.add_argument("--chain-share", type=float, default=0.2)
    parser.add_argument("--model", default="zipf", help="'zipf' over the listed models, or one model name")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
