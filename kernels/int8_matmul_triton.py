"""Triton kernel: y[M, N] = x[M, K] @ (int8 W[N, K] * scale[N]).T + bias[N], fp32 accumulation.

Weight-only quantization (W8A16): activations stay fp16/bf16/fp32; the int8 tile is converted to the
activation dtype in registers (exact: |q| <= 127 fits every float format's mantissa), so the weight
crosses memory at one byte per element, which is what matters for the memory-bound decode step.
The per-channel scale and the bias are applied once to the fp32 accumulator, after the K loop.

This module imports triton at import time; `kernels.int8_matmul` imports it only when it
dispatches to Triton, so machines without triton never load it. Call the typed wrapper
`kernels.int8_matmul.int8_weight_linear`, not `launch` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels.int8_matmul import triton_interpreting


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters of one kernel instance (compiled once per distinct config)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


def default_config(m: int, n: int, k: int, activation_bytes: int = 2) -> KernelConfig:
    """Tiles by M bucket; a fixed choice (no autotune) so varying batch sizes never trigger re-tuning.

    Small M (decode) is bound by streaming the weight: narrow N tiles give more programs to cover the
    SMs and long K tiles keep more bytes in flight. Large M (prefill) is compute-bound: square tiles.
    fp32 activations double the x tile, so they get at most 3 pipeline stages (shared memory).
    """
    if m <= 16:
        cfg = KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=4)
    elif m <= 64:
        cfg = KernelConfig(block_m=32 if m <= 32 else 64, block_n=64, block_k=128, num_warps=4, num_stages=4)
    else:
        cfg = KernelConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
    if activation_bytes > 2 and cfg.num_stages > 3:
        cfg = replace(cfg, num_stages=3)
    return cfg


@triton.jit
def _int8_weight_matmul_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_om,
    stride_on,
    HAS_BIAS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped launch order: programs that run together share weight columns, so W is reused from L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    # a [BLOCK_K, BLOCK_N] view of W.T, read straight from the row-major [N, K] weight
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
        if DOT_IN_FP32:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    scale = tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    acc = acc * scale[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def launch(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Run the kernel on already-validated 2-D inputs (x [M, K], qweight [N, K], scale/bias [N])."""
    m, k = x.shape
    n = qweight.shape[0]
    if max(x.numel(), qweight.numel(), m * n) >= 2**31:
        shapes = f"x {tuple(x.shape)}, qweight {tuple(qweight.shape)}"
        raise ValueError(f"int8 matmul computes offsets in 32 bits; {shapes} has 2**31 or more elements")
    cfg = config or default_config(m, n, k, x.element_size())
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    # fp32 activations: exact IEEE dot (no TF32) so results match the fp32 reference. The interpreter
    # cannot convert int8 to bf16 or multiply bf16 (numpy has no bf16), so it computes bf16 in fp32.
    dot_in_fp32 = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and triton_interpreting())
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _int8_weight_matmul_kernel[grid](
        x,
        qweight,
        scale,
        bias if bias is not None else scale,  # any valid pointer; never read when HAS_BIAS is False
        out,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        qweight.stride(0),
        qweight.stride(1),
        out.stride(0),
        out.stride(1),
        HAS_BIAS=bias is not None,
        DOT_IN_FP32=dot_in_fp32,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out
