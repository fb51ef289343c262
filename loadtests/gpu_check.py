"""GPU check (about 2 minutes on one GPU, the zoo build included): the tests marked `gpu` (pytest -m
gpu: NVML on torch's own device, eviction giving torch's cache back), NVML accounting vs torch, the
pool's predicted footprints vs torch's allocation, pinned host->GPU swap bandwidth vs a raw pinned
copy (mux-120m and 1B/7B-shaped synthetic models), a two-model swap loop through the pool, greedy
answers of the batched engine vs `model.generate`, int8 vs bf16 in the engine, and the int8
kernel's checks (kernels/gpu_check.py).

Run on a machine with a CUDA GPU: `python -m loadtests.gpu_check --json [--only swap,swap_1b]`.
Prints one JSON line; without a GPU it says so and exits 0. Results go in docs/BENCHMARKS.md
with the card's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path


def nvml_vs_torch(torch) -> dict:
    """Allocate known amounts; NVML's used delta should track torch's allocation (plus context)."""
    from workers.memory import nvml_memory

    nvml = nvml_memory("cuda")  # the GPU torch calls cuda:0, whatever NVML's numbering
    torch.cuda.synchronize()
    base_nvml, base_torch = nvml.used(), torch.cuda.memory_reserved()
    rows = []
    blocks = []
    for mib in (256, 1024, 4096):
        blocks.append(torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()
        rows.append({"allocated_mib": sum(b.numel() for b in blocks) // 2**20,
                     "nvml_delta_mib": (nvml.used() - base_nvml) // 2**20,
                     "torch_reserved_delta_mib": (torch.cuda.memory_reserved() - base_torch) // 2**20})
    del blocks
    torch.cuda.empty_cache()
    return {"card": nvml.name, "total_mib": nvml.total() // 2**20, "steps": rows}


def _synthetic_model(torch, hidden: int, layers: int):
    """A Llama of the given shape with random bf16 weights made on the GPU (no checkpoint on disk:
    the swap path only needs the tensors), to measure swaps at the size of a real model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 128,
                         num_key_value_heads=hidden // 128)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cuda")
    with torch.no_grad():
        for t in model.parameters():
            t.normal_(0, 0.02)
    return model


def swap_bandwidth(torch, model, label: str, repeats: int = 5) -> dict:
    """Host (pinned) -> GPU through the pool's warm path vs one raw pinned copy of the same bytes.

    As in the pool: the host copy is made once (pinned), the evicted model is retired to a shell
    (`to_shell`), and each swap-in refills it (`load_warm`: one device allocation, one DMA, views)."""
    from workers.weights import copy_to_host, load_warm, to_shell

    ids = torch.tensor([[1, 2, 3, 4, 5]], device="cuda")
    with torch.no_grad():
        want = model(ids).logits.float()
    started = time.perf_counter()
    host = copy_to_host(model, pin=True)
    host_copy_s = time.perf_counter() - started
    host.shell = to_shell(model)
    del model
    swap, same = [], True
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        resident = load_warm("(kept shell)", torch.bfloat16, "cuda", host)
        swap.append(time.perf_counter() - t0)
        with torch.no_grad():
            same &= bool(torch.equal(resident(ids).logits.float(), want))
        host.shell = to_shell(resident)  # its blocks go back to torch's cache, as on a pool eviction
        del resident
    dest = torch.empty(host.flat.numel(), dtype=torch.uint8, device="cuda")
    raw = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dest.copy_(host.flat, non_blocking=True)
        torch.cuda.synchronize()
        raw.append(time.perf_counter() - t0)
    del dest
    torch.cuda.empty_cache()
    gb = host.nbytes / 1e9
    return {"model": label, "bytes": host.nbytes, "tensors": len(host.tensors),
            "swap_in_gbps": round(gb / statistics.median(swap), 2),
            "raw_pinned_gbps": round(gb / statistics.median(raw), 2),
            "swap_vs_raw": round(statistics.median(raw) / statistics.median(swap), 3),
            "swap_ms": [round(x * 1e3, 2) for x in swap], "raw_ms": [round(x * 1e3, 2) for x in raw],
            "host_copy_s": round(host_copy_s, 2), "logits_identical_after_swaps": same}


def footprint_accuracy(torch, zoo: Path, names: list[str]) -> list[dict]:
    """The pool's predicted footprint (weights + KV reserve) against torch's allocation and NVML
    once the model is resident and has used its whole KV reserve."""
    from workers.memory import NvmlMemory
    from workers.pool import ModelPool
    from workers.types import GenerationRequest, ModelSpec

    nvml = NvmlMemory(0)
    rows = []
    for name in names:
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base_alloc, base_nvml = torch.cuda.memory_allocated(), nvml.used()
        torch.cuda.reset_peak_memory_stats()
        pool = ModelPool([ModelSpec(name, str(zoo / name))], device="cuda", kv_reserve_tokens=512,
                         prefix_cache_bytes=0)
        predicted = pool.footprint(name)

        async def go():
            # one request that fills the KV reserve: prompt + answer = the reserve's tokens
            req = GenerationRequest("f", prompt="lorem ipsum " * 40, max_tokens=256, temperature=0)
            async for _ in pool.generate(name, req):
                pass

        asyncio.run(go())
        torch.cuda.synchronize()
        stats = pool.stats()
        rows.append({"model": name, "predicted_weight_bytes": predicted.weight_bytes,
                     "measured_weight_bytes": stats["measured_weight_bytes"].get(name),
                     "predicted_total_bytes": predicted.total,
                     "torch_allocated_bytes": torch.cuda.memory_allocated() - base_alloc,
                     "torch_peak_bytes": torch.cuda.max_memory_allocated() - base_alloc,
                     "nvml_used_delta_bytes": nvml.used() - base_nvml})
        row = rows[-1]
        row["weights_error"] = round(abs(row["predicted_weight_bytes"] - row["measured_weight_bytes"])
                                     / row["measured_weight_bytes"], 4)
        row["peak_over_predicted"] = round(row["torch_peak_bytes"] / row["predicted_total_bytes"], 3)
        pool.close()
    return rows


def int8_engine(torch, zoo: Path, name: str) -> dict:
    """Tokens/s at 16 streams and resident weight bytes, bf16 weights vs int8 (the Triton kernel)."""
    from loadtests.engine_bench import make_jobs, run_engine
    from workers.engine import Engine
    from workers.weights import load_cold, load_tokenizer, tensor_bytes

    jobs = make_jobs(16, 0, (48, 48))
    out = {"model": name, "streams": 16}
    for label, quantization in (("bf16", None), ("int8", "int8")):
        model = load_cold(str(zoo / name), torch.bfloat16, "cuda", quantization)
        engine = Engine(name, model, load_tokenizer(str(zoo / name)), device="cuda")
        run_engine(engine, [[j] for j in jobs[:4]])  # warm-up: kernels compiled, KV grown
        rates = []
        for _ in range(3):
            seconds, timings = run_engine(engine, [[j] for j in jobs])
            rates.append(sum(t.tokens for t in timings) / seconds)
        out[label] = {"tokens_per_s": round(statistics.median(rates), 1), "weight_bytes": tensor_bytes(model)}
        engine.close()
        del engine, model
        torch.cuda.empty_cache()
    out["int8_bytes_ratio"] = round(out["int8"]["weight_bytes"] / out["bf16"]["weight_bytes"], 3)
    out["int8_speed_ratio"] = round(out["int8"]["tokens_per_s"] / out["bf16"]["tokens_per_s"], 3)
    return out


def engine_greedy_matches_generate(torch, zoo: Path, name: str, dtype: str) -> dict:
    """Greedy answers of the batched engine on the GPU against `model.generate` one at a time."""
    from loadtests.engine_bench import make_jobs
    from workers.engine import Engine
    from workers.types import GenerationRequest

    engine = Engine.load(name, str(zoo / name), device="cuda", dtype=dtype)
    jobs = make_jobs(8, 0, (24, 24))

    async def one(job, i):
        req = GenerationRequest(f"e{i}", prompt=job.prompt, max_tokens=job.max_tokens, temperature=0)
        return [c async for c in engine.generate(req)]

    async def go():
        return await asyncio.gather(*[one(j, i) for i, j in enumerate(jobs)])

    answers = asyncio.run(go())
    same, first_diff = 0, []
    for job, chunks in zip(jobs, answers):
        ids = torch.tensor([engine.encode(GenerationRequest("g", prompt=job.prompt))], device="cuda")
        with torch.inference_mode():
            out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_tokens,
                                        do_sample=False)
        want = engine.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        got = "".join(c.text for c in chunks)
        same += got == want
        if got != want:
            first_diff.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want))))
    engine.close()
    return {"model": name, "dtype": dtype, "requests": len(jobs), "identical": same,
            "first_differing_char": first_diff}


def swap_loop(zoo: Path) -> dict:
    """Two models alternating on a budget that fits one: every switch is a warm swap, none OOMs."""
    from workers.pool import ModelPool
    from workers.types import GenerationRequest, ModelSpec

    names = ["mux-50m", "mux-50m-b"]
    probe = ModelPool([ModelSpec(n, str(zoo / n)) for n in names], device="cuda", kv_reserve_tokens=512)
    budget = max(probe.footprint(n).total for n in names) + 2**20
    pool = ModelPool([ModelSpec(n, str(zoo / n)) for n in names], device="cuda", device_budget_bytes=budget,
                     host_budget_bytes=2**32, kv_reserve_tokens=512)

    async def go():
        t0 = time.perf_counter()
        for i in range(20):
            async for _ in pool.generate(names[i % 2], GenerationRequest("g", prompt="hi", max_tokens=2,
                                                                         temperature=0)):
                pass
            await asyncio.sleep(0.05)  # let the background host copy finish after cold loads
        return time.perf_counter() - t0

    seconds = asyncio.run(go())
    stats = pool.stats()
    pool.close()
    return {"switches": 20, "seconds": round(seconds, 2), "loads": stats["loads"], "load_seconds": stats["load_seconds"],
            "failures": stats["load_failures"]}


def gpu_tests() -> dict:
    """The pytest tests marked `gpu` (skipped in CI, which has no GPU), in a process of their own."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests"],
                         capture_output=True, text=True, timeout=600)
    tail = run.stdout.strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", tail[0])}
    out = {"returncode": run.returncode, **counts}
    if run.returncode != 0:
        out["output"] = run.stdout[-3000:] + run.stderr[-1000:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu_check", "gpu": False, "reason": "no CUDA device"}))
        return
    from workers.weights import load_cold
    from workers.zoo import build_zoo

    zoo = Path(args.zoo)
    build_zoo(zoo, ["mux-120m", "mux-50m", "mux-50m-b", "mux-20m"], progress=False)
    out = {"bench": "gpu_check", "gpu": True, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    parts = (
        ("gpu_tests", gpu_tests),
        ("nvml", lambda: nvml_vs_torch(torch)),
        ("footprint", lambda: footprint_accuracy(torch, zoo, ["mux-20m", "mux-120m"])),
        ("swap", lambda: swap_bandwidth(torch, load_cold(str(zoo / "mux-120m"), torch.bfloat16, "cuda"), "mux-120m")),
        ("swap_1b", lambda: swap_bandwidth(torch, _synthetic_model(torch, 2048, 16), "llama-1b-synthetic")),
        ("swap_7b", lambda: swap_bandwidth(torch, _synthetic_model(torch, 4096, 32), "llama-7b-synthetic", 3)),
        ("swap_loop", lambda: swap_loop(zoo)),
        ("engine_greedy_fp32", lambda: engine_greedy_matches_generate(torch, zoo, "mux-20m", "float32")),
        ("engine_greedy_bf16", lambda: engine_greedy_matches_generate(torch, zoo, "mux-20m", "bfloat16")),
        ("int8_engine", lambda: int8_engine(torch, zoo, "mux-120m")),
    )
    only = {p for p in args.only.split(",") if p}
    for name, fn in parts:
        if only and name not in only:
            continue
        started = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as exc:  # report every part, even if one fails
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        out.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        torch.cuda.empty_cache()
    if not only or "int8_kernel" in only:
        try:
            from kernels.gpu_check import run_gpu_checks

            out["int8_kernel"] = run_gpu_checks()
        except Exception as exc:
            out["int8_kernel"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
