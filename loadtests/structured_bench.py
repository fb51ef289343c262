"""Structured outputs: grammar-constrained decoding against unconstrained decoding, same engine, same run.

Throughput: `c` closed-loop streams (each sends its requests back to back) of json_schema requests,
against the same streams without the schema. Each unconstrained request is given max_tokens equal
to the length its constrained twin produced (same prompt, same seed, temperature 1), so both
systems generate the same number of tokens per request and the ratio is the cost of the mask,
the matcher and the processed sampling path. Rounds alternate the two, after a warm-up.
Compile: a request's grammar lookup for a schema compiled before (what every request after the
first pays: canonical key + LRU hit), and the first compile of schemas never seen (a new schema's
first request pays it, off the event loop), plus building xgrammar's tokenizer info (once per model).

Prints one JSON line: ratio_1 and ratio_16 (constrained tokens/s over unconstrained, medians of
the rounds; ratio_*_cpu the same per CPU second of the process), throughput, cached_compile_ms,
first_compile_ms, goals_met.
Usage: python -m loadtests.structured_bench --json [--model mux-20m] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                     "zip": {"type": "string", "maxLength": 5}},
                    "required": ["city", "zip"]},
    },
    "required": ["name", "age", "role", "tags", "address"],
}
TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
    "type": "object", "properties": {"q": {"type": "string", "maxLength": 20}, "k": {"type": "integer"}},
    "required": ["q"]}}} for i in range(4)]


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def make_requests(n: int, seed: int, constrained: bool, lengths: list[int] | None = None):
    from loadtests.engine_bench import paragraphs
    from workers.types import GenerationRequest

    texts = paragraphs(seed)
    out = []
    for i in range(n):
        kw = {"response_format": response_format(SCHEMA), "max_tokens": 256} if constrained else {"max_tokens": lengths[i]}
        out.append(GenerationRequest(f"{'c' if constrained else 'u'}{i}", prompt=texts[i % len(texts)][:300],
                                     temperature=1.0, seed=seed + i, **kw))
    return out


async def one(engine, req) -> tuple[int, str]:
    last = None
    async for chunk in engine.generate(req):
        last = chunk
    return last.completion_tokens, last.finish_reason


def run_streams(engine, reqs, streams: int) -> tuple[float, list[tuple[int, str]], float]:
    """`streams` closed-loop clients splitting `reqs`; (seconds, per-request (tokens, finish), CPU
    seconds of this process: steadier than wall time when other jobs share the cores)."""
    engine.clear_prefix_cache()
    per = [reqs[i::streams] for i in range(streams)]

    async def stream(jobs):
        return [await one(engine, r) for r in jobs]

    async def go():
        return await asyncio.gather(*[stream(jobs) for jobs in per])

    started, cpu = time.perf_counter(), time.process_time()
    results = asyncio.run(go())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    ordered = [None] * len(reqs)
    for i, jobs in enumerate(results):
        for j, result in enumerate(jobs):
            ordered[i + j * streams] = result
    return seconds, ordered, cpu


def compile_times(engine, fresh: int) -> dict:
    from workers.grammar import grammar_spec
    from workers.types import GenerationRequest

    grammars = engine.grammars
    started = time.perf_counter()
    grammars.info  # noqa: B018  (xgrammar's view of the tokenizer, once per model)
    info_ms = 1e3 * (time.perf_counter() - started)
    firsts = []
    for i in range(fresh):  # schemas never seen: another property name each
        schema = json.loads(json.dumps(SCHEMA).replace('"zip"', f'"zip{i}"'))
        spec = grammar_spec(GenerationRequest("x", prompt="x", response_format=response_format(schema)))
        started = time.perf_counter()
        grammars.compile(spec)
        firsts.append(1e3 * (time.perf_counter() - started))
    tool_req = GenerationRequest("t", prompt="x", tools=TOOLS, tool_choice="required")
    started = time.perf_counter()
    grammars.compile(grammar_spec(tool_req))
    tool_ms = 1e3 * (time.perf_counter() - started)
    req = GenerationRequest("x", prompt="x", response_format=response_format(SCHEMA))
    grammars.compile(grammar_spec(req))
    cached = []
    for _ in range(2000):  # what a request for a known schema pays: its canonical key, then the LRU
        started = time.perf_counter()
        found = grammars.cached(grammar_spec(req))
        cached.append(1e3 * (time.perf_counter() - started))
        assert found is not None
    return {"tokenizer_info_ms": round(info_ms, 2), "first_compile_ms": round(statistics.median(firsts), 2),
            "first_compile_ms_max": round(max(firsts), 2), "tool_grammar_first_compile_ms": round(tool_ms, 2),
            "cached_compile_ms": round(statistics.median(cached), 4),
            "cached_compile_ms_p99": round(sorted(cached)[int(0.99 * len(cached))], 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", default="mux-20m")
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one round, fewer requests")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from workers.engine import Engine
    from workers.zoo import build_zoo

    started = time.perf_counter()
    build_zoo(Path(args.zoo), [args.model], progress=False)
    engine = Engine.load(args.model, str(Path(args.zoo) / args.model), device=args.device)
    out: dict = {"bench": "structured", "model": args.model, "device": args.device, "threads": args.threads,
                 "dtype": str(engine.model.dtype).removeprefix("torch."), "seed": args.seed, "quick": args.quick,
                 "machine": platform.processor() or platform.machine(), "loadavg_start": round(os.getloadavg()[0], 2)}
    out.update(compile_times(engine, fresh=5 if args.quick else 20))

    rounds = 1 if args.quick else 5
    levels = {1: 4 if args.quick else 6, 16: 16 if args.quick else 32}  # streams -> requests per round
    # warm-up at both levels (allocator growth, first batch shapes), and the twins' lengths
    twins = {}
    for streams, count in levels.items():
        constrained = make_requests(count, args.seed + streams, True)
        _, results, _ = run_streams(engine, constrained, streams)
        out.setdefault("constrained_finish", {})[str(streams)] = sorted({f for _, f in results})
        twins[streams] = (constrained, make_requests(count, args.seed + streams, False, [t for t, _ in results]))
        run_streams(engine, twins[streams][1], streams)
    rates: dict[int, dict[str, list[float]]] = {s: {"constrained": [], "unconstrained": []} for s in levels}
    cpu_rates: dict[int, dict[str, list[float]]] = {s: {"constrained": [], "unconstrained": []} for s in levels}
    for r in range(rounds):
        for streams in levels:
            order = ("constrained", "unconstrained") if r % 2 == 0 else ("unconstrained", "constrained")
            for kind in order:
                reqs = twins[streams][0 if kind == "constrained" else 1]
                seconds, results, cpu = run_streams(engine, reqs, streams)
                rates[streams][kind].append(sum(t for t, _ in results) / seconds)
                cpu_rates[streams][kind].append(sum(t for t, _ in results) / cpu)
    out["throughput_tok_s"] = {kind: {str(s): round(statistics.median(rates[s][kind]), 1) for s in levels}
                               for kind in ("constrained", "unconstrained")}
    for s in levels:
        out[f"ratio_{s}"] = round(statistics.median(rates[s]["constrained"]) / statistics.median(rates[s]["unconstrained"]), 3)
        out[f"ratio_{s}_per_round"] = [round(c / u, 3) for c, u in zip(rates[s]["constrained"], rates[s]["unconstrained"])]
        # tokens per CPU second of the process, same runs: what the mask costs, less the neighbours' noise
        out[f"ratio_{s}_cpu"] = round(statistics.median(cpu_rates[s]["constrained"])
                                      / statistics.median(cpu_rates[s]["unconstrained"]), 3)
    out["tokens_per_request"] = round(statistics.mean(r.max_tokens for r in twins[16][1]), 1)
    out["goals_met"] = {"ratio_16>=0.9": out["ratio_16"] >= 0.9, "cached_compile_ms<=1": out["cached_compile_ms"] <= 1.0}
    out["loadavg_end"] = round(os.getloadavg()[0], 2)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    engine.close()
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
