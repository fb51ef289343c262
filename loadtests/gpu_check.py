"""GPU check (<= 4 minutes on one GPU): NVML accounting vs torch, pinned host->GPU swap bandwidth
vs a raw pinned copy, a two-model swap loop through the pool, and the int8 kernel's checks.

Run on a machine with a CUDA GPU: `python -m loadtests.gpu_check --json`. Prints one JSON line;
without a GPU it says so and exits 0. Results go in docs/BENCHMARKS.md with the card's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


def nvml_vs_torch(torch) -> dict:
    """Allocate known amounts; NVML's used delta should track torch's allocation (plus context)."""
    from workers.memory import NvmlMemory

    nvml = NvmlMemory(0)
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


def swap_bandwidth(torch, path: str) -> dict:
    """Host (pinned) -> GPU through the pool's warm loader vs one raw pinned copy of the same bytes."""
    from workers.weights import copy_to_host, load_cold, load_warm

    model = load_cold(path, torch.bfloat16, "cuda")
    host = copy_to_host(model, pin=True)
    del model
    torch.cuda.empty_cache()
    swap = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        resident = load_warm(path, torch.bfloat16, "cuda", host)
        swap.append(time.perf_counter() - t0)
        del resident
        torch.cuda.empty_cache()
    flat = torch.empty(host.nbytes, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(host.nbytes, dtype=torch.uint8, device="cuda")
    raw = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dest.copy_(flat, non_blocking=True)
        torch.cuda.synchronize()
        raw.append(time.perf_counter() - t0)
    gb = host.nbytes / 1e9
    return {"bytes": host.nbytes, "swap_in_gbps": round(gb / min(swap), 2), "raw_pinned_gbps": round(gb / min(raw), 2),
            "swap_vs_raw": round(min(raw) / min(swap), 3)}


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--zoo", default="var/zoo")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu_check", "gpu": False, "reason": "no CUDA device"}))
        return
    from workers.zoo import build_zoo

    zoo = Path(args.zoo)
    build_zoo(zoo, ["mux-120m", "mux-50m", "mux-50m-b"], progress=False)
    out = {"bench": "gpu_check", "gpu": True, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    for name, fn in (("nvml", lambda: nvml_vs_torch(torch)), ("swap", lambda: swap_bandwidth(torch, str(zoo / "mux-120m"))),
                     ("swap_loop", lambda: swap_loop(zoo))):
        try:
            out[name] = fn()
        except Exception as exc:  # report every part, even if one fails
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        from kernels.gpu_check import run_gpu_checks

        out["int8_kernel"] = run_gpu_checks()
    except Exception as exc:
        out["int8_kernel"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
