"""Runs the Triton int8 kernel in Triton's CPU interpreter; a script, started by the tests.

    TRITON_INTERPRET=1 python tests/kernels/interpret_cases.py CASES_JSON OUT.pt

TRITON_INTERPRET must be set before triton decorates the kernel (at import), which a pytest
process that may already have imported it cannot guarantee; hence a fresh process. For each case
it saves the kernel's output and the reference's, and a dry run of kernels.gpu_check, for the
test process to compare.
"""

from __future__ import annotations

import json
import os
import sys
import zlib

import torch

from kernels.gpu_check import run_gpu_checks
from kernels.int8_matmul import choose_backend, int8_weight_linear
from kernels.int8_matmul_triton import KernelConfig
from kernels.quant_reference import int8_weight_linear_reference, quantize_per_channel


def run_case(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(zlib.crc32(case["id"].encode()))
    dtype = getattr(torch, case["dtype"])
    m, k, n = case["M"], case["K"], case["N"]
    qweight, scale = quantize_per_channel(torch.randn(n, k, generator=gen))
    bias = torch.randn(n, generator=gen).to(dtype) if case["bias"] else None
    x = torch.randn(m, k, generator=gen).to(dtype)
    config = None
    if case["variant"] == "strided_x":  # every other column of a wider tensor: stride(-1) == 2
        x = torch.randn(m, 2 * k, generator=gen).to(dtype)[:, ::2]
    elif case["variant"] == "batched_3d":  # leading dims are flattened and restored
        x = torch.randn(2, m, k, generator=gen).to(dtype)
    elif case["variant"] == "small_tiles":  # many programs, several K steps, grouped launch order
        config = KernelConfig(block_m=16, block_n=16, block_k=32, group_m=2)
    got = int8_weight_linear(x, qweight, scale, bias, backend="triton", config=config)
    return got, int8_weight_linear_reference(x, qweight, scale, bias)


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    cases, out_path = json.loads(sys.argv[1]), sys.argv[2]
    results = {"backend_auto_on_cpu": choose_backend(torch.device("cpu")), "cases": {}}
    for case in cases:
        got, want = run_case(case)
        results["cases"][case["id"]] = {"got": got, "want": want}
    # stored as JSON text: torch.load(weights_only=True) in the test accepts tensors and plain containers
    results["gpu_check_dry_run"] = json.dumps(run_gpu_checks(device="cpu", shapes_m=(1, 20), k=72, n=40))
    torch.save(results, out_path)


if __name__ == "__main__":
    main()
