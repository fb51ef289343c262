"""Preemption by recompute (issue 20 item 2): how long a cold model's request waits on a replica busy
with a hot model's long answers, with `preempt_after_s` off and on.

One in-process ModelPool with room for one model (max_resident 1), float32 (answers compared
exactly). Per mode: `--hot` long requests of the hot model (max_tokens `--hot-tokens`; greedy and
seeded sampling alternating) are started and mid-answer (5 chunks each) when one short request of
the cold model arrives. Measured: the cold request's latency (sent -> last chunk), the hot
answers' total time, the preemptions and recomputed tokens, and whether every hot answer equals
the off mode's (text and completion_tokens). Prints one JSON line.

    .venv/bin/python -m loadtests.preemption_bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelSpec
from workers.zoo import build_zoo


def hot_requests(count: int, tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"hot-{i}", prompt=f"Story number {i}: once upon a time", max_tokens=tokens,
                              temperature=0.0 if i % 2 == 0 else 0.9, seed=None if i % 2 == 0 else i)
            for i in range(count)]


async def one_mode(pool: ModelPool, hot: str, cold: str, requests: list[GenerationRequest]) -> dict:
    async def collect(model, req, into):
        async for chunk in pool.generate(model, req):
            into.append(chunk)

    await collect(hot, GenerationRequest("warm", prompt="hi", max_tokens=2, temperature=0.0), [])
    streams = [[] for _ in requests]
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(collect(hot, r, s)) for r, s in zip(requests, streams)]
    while not all(len(s) >= 5 for s in streams):
        await asyncio.sleep(0.005)
    sent = time.perf_counter()
    await collect(cold, GenerationRequest("cold", prompt="hello there", max_tokens=16, temperature=0.0), [])
    cold_s = time.perf_counter() - sent
    hot_done_before_cold = sum(1 for s in streams if s[-1].finish_reason is not None)
    await asyncio.gather(*tasks)
    stats = pool.stats()
    return {"cold_latency_s": round(cold_s, 3), "hot_total_s": round(time.perf_counter() - started, 3),
            "hot_finished_before_cold": hot_done_before_cold, "preemptions": stats["preemptions"],
            "recomputed_tokens": stats["recomputed_tokens"], "evictions": stats["evictions"],
            "answers": [("".join(c.text for c in s), s[-1].completion_tokens) for s in streams]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hot-model", default="mux-10m")
    ap.add_argument("--cold-model", default="mux-20m")
    ap.add_argument("--hot", type=int, default=4, help="long hot requests running when the cold one arrives")
    ap.add_argument("--hot-tokens", type=int, default=1024)
    ap.add_argument("--modes", default="off,2.0,0.5", help="preempt_after_s values; off: no preemption")
    ap.add_argument("--zoo", default="var/zoo")
    args = ap.parse_args()
    zoo = Path(args.zoo)
    build_zoo(zoo, [args.hot_model, args.cold_model], progress=False)
    requests = hot_requests(args.hot, args.hot_tokens)
    out: dict = {"bench": "preemption", "hot_model": args.hot_model, "cold_model": args.cold_model,
                 "hot_requests": args.hot, "hot_tokens": args.hot_tokens}
    reference = None
    for mode in args.modes.split(","):
        after = None if mode == "off" else float(mode)
        pool = ModelPool([ModelSpec(n, str(zoo / n), dtype="float32") for n in (args.hot_model, args.cold_model)],
                         max_resident=1, torch_threads=1, load_timeout_s=600, preempt_after_s=after,
                         kv_reserve_tokens=args.hot * (args.hot_tokens + 64))
        try:
            result = asyncio.run(one_mode(pool, args.hot_model, args.cold_model, requests))
        finally:
            pool.close()
        answers = result.pop("answers")
        reference = reference or answers
        result["answers_equal_first_mode"] = answers == reference
        out[mode] = result
    print(json.dumps(out))


if __name__ == "__main__":
    main()
