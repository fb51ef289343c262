"""GPU check of the int8 weight-only kernel: correctness and timing against torch, as one dict.

`run_gpu_checks()` is called by loadtests/gpu_check.py on a CUDA machine (it cannot run on CPU).
For LLM-like shapes (M tokens x K=N=4096) and fp16/bf16 activations it compares three ways of
computing the same layer, measured in the same run:

- triton:          the int8 kernel (one byte per weight crosses memory);
- torch_linear:    F.linear against the dequantized weight held in fp16/bf16 (what int8 replaces);
- dequant_linear:  the pure-torch int8 path (cast the codes per call, then F.linear).

Correctness is the kernel against the fp32 reference (relative Frobenius error). Timings are
medians from triton.testing.do_bench; ratios > 1 mean the kernel is faster. A small sweep of
alternative tile configs for the decode shape reports whether the default heuristic is beaten.
Runs in well under a minute (a handful of compiles and ~50 short benchmarks).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from kernels.int8_matmul import int8_weight_linear
from kernels.quant_reference import dequantize, int8_weight_linear_reference, quantize_per_channel

SHAPES_M = (1, 16, 128)
K = N = 4096
# norm-relative error against the fp32 reference; both accumulate in fp32, so this is output rounding
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def _bench_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))
    fn()  # CPU dry runs (TRITON_INTERPRET=1 in tests): one timed call, the numbers mean nothing
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def _check_case(m: int, k: int, n: int, dtype: torch.dtype, with_bias: bool, gen: torch.Generator) -> dict:
    device = gen.device
    weight = torch.randn(n, k, device=device, generator=gen) * 0.02
    qweight, scale = quantize_per_channel(weight)
    x = torch.randn(m, k, device=device, generator=gen).to(dtype)
    bias = (torch.randn(n, device=device, generator=gen) * 0.1).to(dtype) if with_bias else None
    w_float = dequantize(qweight, scale, dtype)

    want = int8_weight_linear_reference(x, qweight, scale, bias)
    got = int8_weight_linear(x, qweight, scale, bias, backend="triton")
    torch_path = int8_weight_linear(x, qweight, scale, bias, backend="torch")
    err = _relative_error(got, want)
    row = {
        "dtype": str(dtype).removeprefix("torch."),
        "M": m,
        "K": k,
        "N": n,
        "bias": with_bias,
        "rel_err_triton_vs_reference": err,
        "rel_err_torch_path_vs_reference": _relative_error(torch_path, want),
        "ok": err <= TOLERANCE[dtype],
    }
    ms_triton = _bench_ms(lambda: int8_weight_linear(x, qweight, scale, bias, backend="triton"), device)
    ms_linear = _bench_ms(lambda: F.linear(x, w_float, bias), device)
    ms_dequant = _bench_ms(lambda: int8_weight_linear(x, qweight, scale, bias, backend="torch"), device)
    row.update(
        ms_triton=ms_triton,
        ms_torch_linear=ms_linear,
        ms_dequant_linear=ms_dequant,
        speedup_vs_torch_linear=ms_linear / ms_triton,
        speedup_vs_dequant_linear=ms_dequant / ms_triton,
        # decode is weight-streaming: bytes of weight read per second is the number that matters
        weight_gb_per_s_triton=qweight.numel() / (ms_triton * 1e-3) / 1e9,
        weight_gb_per_s_torch_linear=w_float.numel() * w_float.element_size() / (ms_linear * 1e-3) / 1e9,
    )
    return row


def _sweep_decode_configs(k: int, n: int, dtype: torch.dtype, gen: torch.Generator) -> list[dict]:
    """Time a few alternative tilings at M=1 (the decode step) against the default heuristic."""
    from kernels.int8_matmul_triton import KernelConfig, default_config

    device = gen.device
    qweight, scale = quantize_per_channel(torch.randn(n, k, device=device, generator=gen) * 0.02)
    x = torch.randn(1, k, device=device, generator=gen).to(dtype)
    want = int8_weight_linear_reference(x, qweight, scale)
    candidates = [
        default_config(1, n, k),
        KernelConfig(block_m=16, block_n=16, block_k=256, num_warps=4, num_stages=4),
        KernelConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4),
        KernelConfig(block_m=16, block_n=32, block_k=512, num_warps=4, num_stages=3),
    ]
    rows = []
    for i, cfg in enumerate(candidates):
        row = {"default": i == 0, **asdict(cfg)}
        try:
            got = int8_weight_linear(x, qweight, scale, backend="triton", config=cfg)
            row["rel_err"] = _relative_error(got, want)
            row["ms"] = _bench_ms(lambda: int8_weight_linear(x, qweight, scale, backend="triton", config=cfg), device)
        except Exception as exc:  # e.g. out of shared memory on a smaller GPU: report, keep going
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
    return rows


def run_gpu_checks(
    seed: int = 0, *, device: str = "cuda", shapes_m: tuple[int, ...] = SHAPES_M, k: int = K, n: int = N
) -> dict:
    """Correctness and timing of the Triton int8 kernel on a CUDA device; a JSON-able dict.

    Returns {"ok", "device", "torch", "triton", "cases": [...], "decode_config_sweep": [...],
    "seconds"}; a case that raises is reported with "error" and makes "ok" false. Without CUDA it
    returns {"ok": False, "skipped": ...}. `device="cpu"` with small shapes is a dry run of this
    code under TRITON_INTERPRET=1 (tests); its timings mean nothing.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return {"ok": False, "skipped": "no CUDA device"}
    import triton

    started = time.perf_counter()
    gen = torch.Generator(device=dev).manual_seed(seed)
    plan = [(m, k, n, dtype, False) for dtype in (torch.float16, torch.bfloat16) for m in shapes_m]
    plan.append((max(shapes_m), k, n, torch.bfloat16, True))  # the fused bias path once, at the largest M
    if dev.type == "cuda":
        # decode shapes again with weights larger than any GPU's L2 (64 MB int8 at 8192 x 8192), so
        # the timings show streaming from device memory rather than a cache-resident weight
        big = max(k, n, 8192)
        plan += [(m, big, big, torch.bfloat16, False) for m in (1, 16)]
    cases = []
    for m, k_in, n_out, dtype, with_bias in plan:
        try:
            cases.append(_check_case(m, k_in, n_out, dtype, with_bias, gen))
        except Exception as exc:  # report and keep going: one bad shape should not hide the others
            error = f"{type(exc).__name__}: {exc}"[:500]
            cases.append({"dtype": str(dtype), "M": m, "K": k_in, "N": n_out, "bias": with_bias, "ok": False,
                          "error": error})
    return {
        "ok": all(c["ok"] for c in cases),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cases": cases,
        "decode_config_sweep": _sweep_decode_configs(k, n, torch.bfloat16, gen),
        "seconds": round(time.perf_counter() - started, 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run_gpu_checks()))
