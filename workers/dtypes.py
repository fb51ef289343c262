"""The dtype a model is served in when its config names none.

GPUs: bfloat16. CPUs: bfloat16 where the processor has native bf16 dot products (AVX512-BF16 or
AMX), float32 elsewhere. On such a CPU a bf16 matrix product over a batch of rows ran ~3x faster
than fp32 on one core (16 x 384 x 2048: 278 against 85 GFLOP/s) and a single row's LM head ~3x
faster (half the bytes); weights and KV take half the memory, so the same byte budget holds twice
the models. Without the instructions bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay with float32
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(device: str) -> str:
    if device != "cpu":
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"
