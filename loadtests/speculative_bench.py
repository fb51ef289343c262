"""Speculative decoding: the served model alone against the same model with a draft, and against
Hugging Face's own assisted generation (`generate(assistant_model=...)`) with the same draft.

The zoo's speculative pair (mux-40m and mux-40m-draft, whose draft predicts the target's greedy
token most of the time; see workers/zoo.py) unless --model / --draft say otherwise. One request at
a time (speculation is a latency tool: with many sequences decoding, batching already keeps the
model busy and the engine stops speculating), greedy, the same prompts through every system,
rounds alternating the systems' order. Every system's text must be identical to the model alone;
`identical` says whether it was.

Prints one JSON line: tokens/s per system, `speculative_speedup` (engine with draft over engine
alone), `speedup_vs_hf_assisted` (engine with draft over HF's assisted generation), the draft's
acceptance rate and tokens emitted per forward of the served model.
Usage: python -m loadtests.speculative_bench --json [--quick] [--draft-tokens 4]
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

from loadtests.engine_bench import engine_request, make_jobs

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_engine(engine, jobs, draft=None, draft_tokens: int = 4) -> tuple[float, int, list[str]]:
    texts: list[str] = []

    async def go():
        return [await engine_request(engine, job, f"spec-{i}", draft=draft, texts=texts, draft_tokens=draft_tokens)
                for i, job in enumerate(jobs)]

    engine.clear_prefix_cache()  # each round computes its prompts (no reuse from the other system's round)
    started = time.perf_counter()
    timings = asyncio.run(go())
    return time.perf_counter() - started, sum(t.tokens for t in timings), texts


def run_hf_assisted(engine, draft_model, jobs, draft_tokens: int, torch) -> tuple[float, int, list[str]]:
    from workers.types import GenerationRequest

    texts, tokens, started = [], 0, time.perf_counter()
    for job in jobs:
        ids = torch.tensor([engine.encode(GenerationRequest("hf", prompt=job.prompt))])
        with torch.inference_mode():
            out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_tokens,
                                        min_new_tokens=job.max_tokens, do_sample=False,
                                        assistant_model=draft_model, num_assistant_tokens=draft_tokens,
                                        num_assistant_tokens_schedule="constant")
        new = out[0][ids.shape[1]:]
        tokens += len(new)
        texts.append(engine.tokenizer.decode(new, skip_special_tokens=True))
    return time.perf_counter() - started, tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", default="mux-40m")
    parser.add_argument("--draft", default="mux-40m-draft")
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer prompts and rounds (about a minute)")
    parser.add_argument("--dtype", default=None,
                        help="both models' dtype (default: the engine's). Texts are identical in float32; in "
                             "bf16 a verify forward over K+1 tokens rounds differently from K+1 one-token "
                             "forwards, so near-ties can flip")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from workers.engine import Engine
    from workers.zoo import build_zoo

    build_zoo(Path(args.zoo), [args.model, args.draft], progress=False)
    rounds, n_jobs = (1, 4) if args.quick else (3, 6)
    started, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    engine = Engine.load(args.model, str(Path(args.zoo) / args.model), dtype=args.dtype)
    drafter = Engine.load(args.draft, str(Path(args.zoo) / args.draft), dtype=args.dtype)
    draft = drafter.model
    # every request runs to max_tokens (no early stop), so all systems emit the same token counts
    engine.eos_ids = set()
    jobs = make_jobs(n_jobs, args.seed, (64, 64))
    run_engine(engine, jobs[:1]), run_engine(engine, jobs[:1], draft, args.draft_tokens)  # warm-up

    systems = {
        "engine": lambda: run_engine(engine, jobs),
        "engine_speculative": lambda: run_engine(engine, jobs, draft, args.draft_tokens),
        "hf_assisted": lambda: run_hf_assisted(engine, draft, jobs, args.draft_tokens, torch),
    }
    rates: dict[str, list[float]] = {name: [] for name in systems}
    texts: dict[str, list[str]] = {}
    proposed0, accepted0, steps0 = engine.draft_proposed, engine.draft_accepted, engine.speculative_steps
    for r in range(rounds):
        order = list(systems)[r % 3:] + list(systems)[:r % 3]
        for name in order:
            seconds, tokens, out = systems[name]()
            rates[name].append(tokens / seconds)
            texts.setdefault(name, out)
    proposed = engine.draft_proposed - proposed0
    accepted = engine.draft_accepted - accepted0
    forwards = engine.speculative_steps - steps0  # verify forwards of the served model
    median = {name: statistics.median(v) for name, v in rates.items()}
    out = {
        "bench": "speculative", "model": args.model, "dtype": str(engine.model.dtype).removeprefix("torch."), "draft": args.draft, "draft_tokens": args.draft_tokens,
        "threads": args.threads, "requests": n_jobs, "tokens_per_request": 64, "rounds": rounds,
        "machine": platform.processor() or platform.machine(), "loadavg_start": load_start,
        "tokens_per_s": {k: round(v, 1) for k, v in median.items()},
        "speculative_speedup": round(median["engine_speculative"] / median["engine"], 3),
        "speedup_vs_hf_assisted": round(median["engine_speculative"] / median["hf_assisted"], 3),
        "hf_assisted_speedup": round(median["hf_assisted"] / median["engine"], 3),
        "acceptance": round(accepted / proposed, 3) if proposed else None,
        "tokens_per_verify_forward": round((accepted + forwards) / forwards, 2) if forwards else None,
        "verify_forwards": forwards,
        "identical": texts["engine_speculative"] == texts["engine"] and texts["hf_assisted"] == texts["engine"],
        "loadavg_end": round(os.getloadavg()[0], 2), "wall_s": round(time.perf_counter() - started, 1),
    }
    engine.close()
    drafter.close()
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
