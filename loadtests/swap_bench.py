"""Swap bandwidth and cold-start latency of the pool's weight tiers, against the plain baselines.

Prints one JSON line:
  swap_in_gbps / memcpy_gbps: host tier -> resident model vs allocating and copying the same bytes;
  cold_ttft_s / from_pretrained_ttft_s: disk -> first token through the pool's loader vs plain
  AutoModelForCausalLM.from_pretrained + generate, both with the file dropped from the page cache
  (checked with mincore: page_cache_dropped) and the bytes each really read by its first token
  (cold_read_bytes / from_pretrained_read_bytes, of checkpoint_bytes).
Usage: python -m loadtests.swap_bench --json [--model mux-120m] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def drop_page_cache(model_dir: Path) -> bool:
    """Ask the kernel to forget the checkpoint's pages (no root needed for clean pages), then
    check with mincore that none is left: pages still mapped by a live model are not dropped."""
    return drop_files_cache(list(model_dir.glob("*.safetensors")))


def cached_bytes(model_dir: Path) -> int:
    """Bytes of the checkpoint's safetensors files in the page cache."""
    return cached_files_bytes(list(model_dir.glob("*.safetensors")))


def drop_files_cache(files: list[Path]) -> bool:
    """drop_page_cache for any files (a GGUF file)."""
    ok = True
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok and cached_files_bytes(files) == 0


def cached_files_bytes(files: list[Path]) -> int:
    """Bytes of the files in the page cache (mincore on a fresh mapping, which reads nothing)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    total = 0
    for f in files:
        size = f.stat().st_size
        fd = os.open(f, os.O_RDONLY)
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        os.close(fd)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {f}")
        try:
            vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {f}")
            total += sum(b & 1 for b in vec.raw) * mmap.PAGESIZE
        finally:
            libc.munmap(addr, size)
    return min(total, sum(f.stat().st_size for f in files))


def first_token_plain(path: str, torch) -> float:
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        model.generate(ids, max_new_tokens=1, do_sample=False, attention_mask=torch.ones_like(ids))
    return time.perf_counter() - started


def first_token_pool(path: str, name: str, torch) -> float:
    import asyncio

    from workers.pool import ModelPool
    from workers.types import GenerationRequest, ModelSpec

    pool = ModelPool([ModelSpec(name, path)], kv_reserve_tokens=64)

    async def go():
        started = time.perf_counter()
        agen = pool.generate(name, GenerationRequest("b", prompt="abcd", max_tokens=1, temperature=0))
        async for _ in agen:
            break
        elapsed = time.perf_counter() - started
        await agen.aclose()
        return elapsed

    try:
        return asyncio.run(go())
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", default="mux-120m")
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from workers.weights import copy_to_host, load_cold, load_warm, to_shell
    from workers.zoo import build_zoo

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    (model_dir,) = build_zoo(Path(args.zoo), [args.model], progress=False)
    path = str(model_dir)

    # warm tier: host copy -> a resident model, vs memcpy of the same tensors into new memory
    # (as in the pool, each swapped-in model is retired to a shell on eviction and refilled next time)
    model = load_cold(path, torch.float32, "cpu")
    host = copy_to_host(model, pin=False)
    host.shell = to_shell(model)
    del model
    swap_s, memcpy_s = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        resident = load_warm(path, torch.float32, "cpu", host)
        swap_s.append(time.perf_counter() - started)
        host.shell = to_shell(resident)
        del resident
        started = time.perf_counter()
        copy = torch.empty_like(host.flat).copy_(host.flat)  # the same bytes in one allocation and copy
        memcpy_s.append(time.perf_counter() - started)
        del copy
    gb = host.nbytes / 1e9
    file_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))

    # cold: disk -> first token, page cache dropped before each, order alternated
    # (read_bytes: the checkpoint's bytes in the page cache once the first token is out, i.e. what
    # each side really read from disk; transformers alone maps lazily and reads what the forward touches)
    cold, plain, dropped = [], [], True
    read_bytes = {"pool": [], "plain": []}
    for warm_up in (first_token_pool, first_token_plain):  # untimed, cold too: one-time costs of each path
        gc.collect()
        drop_page_cache(model_dir)
        warm_up(path, args.model, torch) if warm_up is first_token_pool else warm_up(path, torch)
    for i in range(args.repeats):
        for which in (("pool", "plain") if i % 2 == 0 else ("plain", "pool")):
            gc.collect()  # a model still mapping the file would keep its pages cached
            dropped &= drop_page_cache(model_dir)
            if which == "pool":
                cold.append(first_token_pool(path, args.model, torch))
            else:
                plain.append(first_token_plain(path, torch))
            read_bytes[which].append(cached_bytes(model_dir))

    result = {
        "bench": "swap_bench",
        "model": args.model,
        "weight_bytes": host.nbytes,
        "swap_in_gbps": round(gb / min(swap_s), 3),
        "memcpy_gbps": round(gb / min(memcpy_s), 3),
        "swap_vs_memcpy": round(min(memcpy_s) / min(swap_s), 3),
        "cold_ttft_s": round(statistics.median(cold), 3),
        "from_pretrained_ttft_s": round(statistics.median(plain), 3),
        "cold_vs_from_pretrained": round(statistics.median(cold) / statistics.median(plain), 3),
        "cold_runs_s": [round(x, 3) for x in cold],
        "from_pretrained_runs_s": [round(x, 3) for x in plain],
        "checkpoint_bytes": file_bytes,
        "cold_read_bytes": min(read_bytes["pool"]),
        "from_pretrained_read_bytes": min(read_bytes["plain"]),
        "page_cache_dropped": dropped,
        "repeats": args.repeats,
        "device": "cpu",
        "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
