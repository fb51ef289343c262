"""Engine throughput: muxgate's continuous batching against sequential `model.generate`, and an
agent chain's time to first token with and without prefix reuse. One model, one run.

Throughput: `c` closed-loop streams (each sends its requests back to back, so sequences join and
leave a running batch as their lengths differ) through the engine, against the same requests one
after another through `model.generate` (what serving without batching amounts to). Greedy, fixed
prompts and lengths from a fixed seed, warmed up first; rounds alternate the two systems.
Chain: 10 steps, each prompt = the previous prompt + its answer + a new user turn (chat template);
TTFT at step 10 over step 1, with the engine's prefix cache and with it disabled.

Prints one JSON line: speedup_16 (engine tokens/s over generate's at 16 streams), latency_ratio_1
(engine's per-token latency over generate's, one request at a time), TTFT / inter-token latency
percentiles, chain_ttft_ratio and chain_ttft_ratio_no_reuse.
Usage: python -m loadtests.engine_bench --json [--model mux-20m] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = Path(__file__).resolve().parent.parent / "workers" / "zoo_data" / "corpus.txt"


@dataclass
class Job:
    prompt: str
    max_tokens: int


@dataclass
class Timing:
    """One request as its client saw it: submit time and (arrival time, tokens so far) per chunk."""

    submitted: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.arrivals[-1][1] if self.arrivals else 0

    @property
    def ttft(self) -> float:
        return self.arrivals[0][0] - self.submitted

    def gaps(self) -> list[float]:
        """Inter-token latencies: each chunk's wait spread over the tokens it carried."""
        out = []
        for (t0, n0), (t1, n1) in zip(self.arrivals, self.arrivals[1:]):
            if n1 > n0:
                out += [(t1 - t0) / (n1 - n0)] * (n1 - n0)
        return out


def paragraphs(seed: int) -> list[str]:
    # distinct paragraphs (the corpus repeats some), so throughput requests share no prefix by construction
    lines = list(dict.fromkeys(p.strip() for p in CORPUS.read_text().split("\n\n") if len(p.strip()) > 40))
    random.Random(seed).shuffle(lines)
    return lines


def make_jobs(n: int, seed: int, tokens: tuple[int, int]) -> list[Job]:
    rng = random.Random(seed)
    texts = paragraphs(seed)
    return [Job(texts[i % len(texts)][: rng.randint(60, 400)], rng.randint(*tokens)) for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def latency_summary(timings: list[Timing]) -> dict:
    ttft = [t.ttft for t in timings]
    gaps = [g for t in timings for g in t.gaps()]
    def ms(values: list[float], q: float) -> float:
        return round(1e3 * percentile(values, q), 2)

    return {"ttft_ms": {"p50": ms(ttft, 50), "p99": ms(ttft, 99)}, "itl_ms": {"p50": ms(gaps, 50), "p99": ms(gaps, 99)}}


# ---- the two systems ---------------------------------------------------------------------------


async def engine_request(engine, job: Job, request_id: str, draft=None, texts: list | None = None,
                         draft_tokens: int = 4) -> Timing:
    """One greedy request through the engine (speculative with `draft`); its text goes to `texts`."""
    from workers.types import GenerationRequest

    timing = Timing(time.perf_counter())
    req = GenerationRequest(request_id, prompt=job.prompt, max_tokens=job.max_tokens, temperature=0,
                            draft_tokens=draft_tokens)
    parts = []
    async for chunk in engine.generate(req, draft=draft):
        timing.arrivals.append((time.perf_counter(), chunk.completion_tokens))
        parts.append(chunk.text)
    if texts is not None:
        texts.append("".join(parts))
    return timing


def run_engine(engine, streams: list[list[Job]]) -> tuple[float, list[Timing]]:
    """Closed loop: each stream sends its jobs one after another; all streams at once. The engine
    runs as configured by default (prefix cache on, so its bookkeeping is paid for), emptied first
    so that earlier rounds' answers cannot be reused."""
    engine.clear_prefix_cache()

    async def stream(i: int, jobs: list[Job]) -> list[Timing]:
        return [await engine_request(engine, job, f"s{i}-{j}") for j, job in enumerate(jobs)]

    async def go():
        return await asyncio.gather(*[stream(i, jobs) for i, jobs in enumerate(streams)])

    started = time.perf_counter()
    timings = [t for per_stream in asyncio.run(go()) for t in per_stream]
    return time.perf_counter() - started, timings


def run_generate(engine, jobs: list[Job], torch) -> list[tuple[float, Timing]]:
    """Each job through plain `model.generate`, one after another: (seconds, timing) per job."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self, timing: Timing):
            self.timing, self.calls = timing, 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:  # the first call is the prompt
                self.timing.arrivals.append((time.perf_counter(), self.calls - 1))

        def end(self):
            pass

    from workers.types import GenerationRequest

    out = []
    for job in jobs:
        ids = torch.tensor([engine.encode(GenerationRequest("g", prompt=job.prompt))], device=engine.device)
        timing = Timing(time.perf_counter())
        with torch.inference_mode():
            engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_tokens,
                                  do_sample=False, streamer=Clock(timing))
        out.append((time.perf_counter() - timing.submitted, timing))
    return out


# ---- the agent chain ---------------------------------------------------------------------------


def run_chain(engine, steps: int, answer_tokens: int, seed: int) -> tuple[list[float], list[int], int]:
    """TTFT of each step of one agent conversation; returns (ttfts, prompt lengths, hit tokens)."""
    from workers.types import GenerationRequest

    texts = paragraphs(seed)
    system = "You are an agent with tools. Think, act, observe. " + " ".join(texts[:3])[:900]
    messages = [{"role": "system", "content": system}]
    ttfts, lengths = [], []
    hits_before = engine.prefix_hit_tokens

    async def step(req) -> tuple[float, str]:
        started, first, text = time.perf_counter(), None, []
        async for chunk in engine.generate(req):
            if first is None:
                first = time.perf_counter() - started
            text.append(chunk.text)
        return first, "".join(text)

    for i in range(steps):
        messages.append({"role": "user", "content": texts[3 + i][:200]})
        req = GenerationRequest(f"chain-{seed}-{i}", messages=list(messages), max_tokens=answer_tokens,
                                temperature=0, session_id=f"chain-{seed}")
        lengths.append(len(engine.encode(req)))
        ttft, answer = asyncio.run(step(req))
        ttfts.append(ttft)
        messages.append({"role": "assistant", "content": answer})
    return ttfts, lengths, engine.prefix_hit_tokens - hits_before


def chain_stats(engine, chains: int, steps: int, answer_tokens: int, seed: int) -> dict:
    runs = [run_chain(engine, steps, answer_tokens, seed + 1000 * (k + 1)) for k in range(chains)]
    per_step = [statistics.median(r[0][i] for r in runs) for i in range(steps)]
    return {"ttft_ms": [round(1e3 * t, 2) for t in per_step], "ratio": per_step[-1] / per_step[0],
            "prompt_tokens": runs[0][1], "prefix_hit_tokens": sum(r[2] for r in runs)}


# ---- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", default="mux-20m")
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter answers (about a minute)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 weights and KV there)")
    parser.add_argument("--dtype", default=None, help="weights and KV dtype for both systems (default: the engine's)")
    args = parser.parse_args()

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from workers.engine import Engine

    quick = args.quick
    rounds = 1 if quick else 2
    per_stream = 1 if quick else 2  # requests each stream sends back to back
    token_range = (16, 48) if quick else (32, 96)
    chain_chains, chain_answer = (1, 16) if quick else (3, 32)
    levels = (1, 4, 16)
    solo_jobs = 4 if quick else 6  # the 1-stream level: this many requests, one at a time

    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    engine = Engine.load(args.model, str(Path(args.zoo) / args.model), device=args.device, dtype=args.dtype)
    # the same model with reuse off, for the chain's baseline
    plain = Engine(args.model, engine.model, engine.tokenizer, device=args.device, prefix_cache_bytes=0)
    jobs = make_jobs(max(levels) * per_stream, args.seed, token_range)

    def streams_of(c: int) -> list[list[Job]]:
        return [jobs[i * per_stream:(i + 1) * per_stream] for i in range(c)]

    # untimed, at every concurrency level: first calls of each batch shape pay one-time costs
    # (allocator growth; on a GPU also CUDA's lazy kernel loading, seconds per new shape)
    warm = make_jobs(max(levels), args.seed + 99, (8, 8))
    for c in levels:
        run_engine(engine, [[j] for j in warm[:c]])
    run_generate(engine, warm[:2], torch)

    # Every round measures both systems back to back, so drift in the machine's load (it is shared)
    # hits both alike: one request at a time, alternating engine / generate request by request;
    # then the engine at 4 streams and generate on those streams' requests; then 16 and the rest.
    engine_runs: dict[int, list[tuple[float, list[Timing]]]] = {c: [] for c in levels}
    solo_pairs: list[tuple[float, int, float, int]] = []  # engine s, tokens, generate s, tokens
    generate_rounds: list[dict[int, tuple[float, Timing]]] = []  # job index -> (seconds, timing)
    for r in range(rounds):
        for i, job in enumerate(jobs[:solo_jobs]):
            first_engine = (r + i) % 2 == 0
            if not first_engine:
                (g_s, g_t), = run_generate(engine, [job], torch)
            e_s, e_t = run_engine(engine, [[job]])
            if first_engine:
                (g_s, g_t), = run_generate(engine, [job], torch)
            solo_pairs.append((e_s, e_t[0].tokens, g_s, g_t.tokens))
            engine_runs[1].append((e_s, e_t))
        measured: dict[int, tuple[float, Timing]] = {}
        done = 0
        for c in levels[1:]:
            engine_runs[c].append(run_engine(engine, streams_of(c)))
            upto = c * per_stream
            for i, result in enumerate(run_generate(engine, jobs[done:upto], torch), start=done):
                measured[i] = result
            done = upto
        generate_rounds.append(measured)

    def generate_rate(subset: list[int]) -> float:
        return statistics.median(sum(m[i][1].tokens for i in subset) / sum(m[i][0] for i in subset)
                                 for m in generate_rounds)

    hits_in_throughput_runs = engine.prefix_hit_tokens
    out: dict = {"bench": "engine", "model": args.model, "device": args.device,
                 "dtype": str(engine.model.dtype).removeprefix("torch."), "threads": args.threads, "seed": args.seed, "quick": quick,
                 "machine": platform.processor() or platform.machine(), "loadavg_start": load_start,
                 "rounds": rounds, "tokens_per_request": list(token_range),
                 "throughput_tok_s": {"muxgate": {}, "generate": {}}, "latency": {}}
    engine_solo = sum(p[0] for p in solo_pairs) / sum(p[1] for p in solo_pairs)
    generate_solo = sum(p[2] for p in solo_pairs) / sum(p[3] for p in solo_pairs)
    for c in levels:
        if c == 1:
            rate, base = 1 / engine_solo, 1 / generate_solo
        else:
            subset = list(range(c * per_stream))
            rate = statistics.median(sum(t.tokens for t in timings) / seconds for seconds, timings in engine_runs[c])
            base = generate_rate(subset)
            out[f"speedup_{c}_per_round"] = [
                round(sum(t.tokens for t in timings) / seconds
                      / (sum(m[i][1].tokens for i in subset) / sum(m[i][0] for i in subset)), 3)
                for (seconds, timings), m in zip(engine_runs[c], generate_rounds)]
        out["throughput_tok_s"]["muxgate"][str(c)] = round(rate, 1)
        out["throughput_tok_s"]["generate"][str(c)] = round(base, 1)
        out[f"speedup_{c}"] = round(rate / base, 3)
        out["latency"][str(c)] = latency_summary([t for _, timings in engine_runs[c] for t in timings])
    out["latency"]["generate"] = latency_summary([t for m in generate_rounds for _, t in m.values()])
    # per-token latency, one request at a time: wall time / tokens, the same requests through each
    out["per_token_ms_1"] = {"muxgate": round(1e3 * engine_solo, 3), "generate": round(1e3 * generate_solo, 3)}
    out["latency_ratio_1"] = round(engine_solo / generate_solo, 3)
    out["prefix_hit_tokens_in_throughput_runs"] = hits_in_throughput_runs

    chain_steps = 10
    reuse = chain_stats(engine, chain_chains, chain_steps, chain_answer, args.seed)
    scratch = chain_stats(plain, chain_chains, chain_steps, chain_answer, args.seed)
    out["chain_ttft_ratio"] = round(reuse["ratio"], 3)
    out["chain_ttft_ratio_no_reuse"] = round(scratch["ratio"], 3)
    out["chain"] = {"steps": chain_steps, "chains": chain_chains, "answer_tokens": chain_answer,
                    "prompt_tokens": reuse["prompt_tokens"], "ttft_ms": reuse["ttft_ms"],
                    "ttft_ms_no_reuse": scratch["ttft_ms"], "prefix_hit_tokens": reuse["prefix_hit_tokens"]}
    out["goals_met"] = {"speedup_16>=4": out["speedup_16"] >= 4, "latency_ratio_1<=1.1": out["latency_ratio_1"] <= 1.1,
                        "chain_ttft_ratio<=1.5": out["chain_ttft_ratio"] <= 1.5}
    out["loadavg_end"] = round(os.getloadavg()[0], 2)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    engine.close()
    plain.close()
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
