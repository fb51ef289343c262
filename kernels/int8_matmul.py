"""Typed wrapper for the int8 weight-only linear: checks inputs, then dispatches Triton or torch.

`int8_weight_linear(x, qweight, scale, bias)` computes x @ (qweight * scale[:, None]).T + bias for
x of any leading shape [..., K] and returns x's dtype. Dispatch (`backend="auto"`):

- CUDA tensors and triton importable       -> the Triton kernel (kernels.int8_matmul_triton);
- CPU tensors with TRITON_INTERPRET=1 set  -> the same kernel in Triton's interpreter (tests only);
- otherwise                                -> a pure-torch path (CPU serving, machines without triton).

triton is imported only inside `_triton_module`, so importing this module never needs it.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from kernels.quant_reference import dequantize

if TYPE_CHECKING:  # the kernel module imports triton
    from kernels.int8_matmul_triton import KernelConfig

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
Backend = Literal["auto", "triton", "torch"]


@functools.cache
def _triton_module() -> ModuleType | None:
    """The kernel module, or None where triton is not installed (cached: the import costs ~1 s)."""
    try:
        from kernels import int8_matmul_triton
    except ImportError:
        return None
    return int8_matmul_triton


def triton_available() -> bool:
    """Whether the Triton kernel can be used in this process (triton is importable)."""
    return _triton_module() is not None


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its numpy interpreter (TRITON_INTERPRET=1: tests on CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_backend(device: torch.device, backend: Backend = "auto") -> Literal["triton", "torch"]:
    """The implementation `int8_weight_linear` runs for tensors on `device` (see the module docstring)."""
    if backend == "torch":
        return "torch"
    runnable = device.type == "cuda" or (device.type == "cpu" and triton_interpreting())
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' requested but triton is not installed (pip install triton)")
        if not runnable:
            raise RuntimeError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); got {device}")
        return "triton"
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return "triton" if runnable and triton_available() else "torch"


def check_int8_linear_inputs(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Raise TypeError/ValueError naming the offending argument when the inputs do not fit together."""
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if qweight.dtype != torch.int8:
        raise TypeError(f"qweight must be int8, got {qweight.dtype}")
    if qweight.dim() != 2:
        raise ValueError(f"qweight must be 2-D [N, K], got shape {tuple(qweight.shape)}")
    n, k = qweight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x's last dimension must be K={k} (qweight is [N={n}, K={k}]), got x shape {tuple(x.shape)}")
    if not scale.is_floating_point():
        raise TypeError(f"scale must be a floating-point tensor, got {scale.dtype}")
    if scale.shape != (n,):
        raise ValueError(f"scale must have shape [N]=({n},), got {tuple(scale.shape)}")
    if bias is not None:
        if not bias.is_floating_point():
            raise TypeError(f"bias must be a floating-point tensor, got {bias.dtype}")
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape [N]=({n},), got {tuple(bias.shape)}")
    devices = {t.device for t in (x, qweight, scale, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"x, qweight, scale and bias must be on one device, got {sorted(map(str, devices))}")
    if qweight.stride(1) != 1:
        # a per-call copy of the weight would silently double the bytes the kernel exists to save
        raise ValueError("qweight must be contiguous along K (row-major [N, K]); call .contiguous() once at load")


def int8_weight_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
    config: "KernelConfig | None" = None,
) -> torch.Tensor:
    """y[..., N] = x[..., K] @ (qweight[N, K] * scale[N, None]).T + bias[N], in x's dtype.

    x is float16/bfloat16/float32 with any leading dims (flattened to rows for the kernel);
    qweight is int8 and row-major; scale and bias are any float dtype (math is done in fp32).
    `backend` forces an implementation (tests, benchmarks); `config` overrides the Triton tile
    heuristic (benchmarks). Inference only: no autograd through the Triton path.
    """
    check_int8_linear_inputs(x, qweight, scale, bias)
    n, k = qweight.shape
    rows = x.reshape(-1, k)
    if rows.shape[0] == 0 or k == 0 or choose_backend(x.device, backend) == "torch":
        out = _torch_int8_weight_linear(rows, qweight, scale, bias)
    else:
        if rows.stride(1) != 1:
            rows = rows.contiguous()  # activations are small; the kernel wants K-contiguous rows
        kernel = _triton_module()
        out = kernel.launch(rows, qweight, scale.contiguous(), None if bias is None else bias.contiguous(), config)
    return out.reshape(*x.shape[:-1], n)


# torch's CPU int8 weight-only kernel reads the codes as they are but does the work of one row per
# row: measured against a bf16 matmul on a [1536, 576] layer (AVX512 + AMX CPU, one thread) it was
# 2.7x faster at 1 row, 1.6x at 4, slower from 8 rows on (2x at 16, 13x at 512). In float32 it was
# 4x slower than a float32 matmul even at one row, so float32 keeps the cast path below.
INT8PACK_MAX_ROWS = 4


def _int8pack_fits(x: torch.Tensor, qweight: torch.Tensor) -> bool:
    """Whether torch's CPU int8 weight-only kernel is the faster and a correct way to compute this
    product: bf16 decode-sized inputs (a few rows), K a multiple of 16 (other K gave wrong sums,
    K=100 a segfault, torch 2.13)."""
    if x.device.type != "cpu" or not hasattr(torch, "_weight_int8pack_mm") or not qweight.is_contiguous():
        return False
    return x.dtype == torch.bfloat16 and x.shape[0] <= INT8PACK_MAX_ROWS and qweight.shape[1] % 16 == 0


def _torch_int8_weight_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The serving path without Triton: for a few bf16 rows on CPU (decode) torch's int8
    weight-only kernel, else one matmul against the int8 codes cast to x's dtype."""
    if _int8pack_fits(x, qweight):
        # its scale is in x's dtype: in bf16 a relative rounding of 2^-9 per channel, the size of
        # the output's own rounding
        out = torch._weight_int8pack_mm(x.contiguous(), qweight, scale.to(x.dtype))
        return out if bias is None else out + bias.to(x.dtype)
    if x.dtype == torch.float16:
        # unscaled sums of codes up to 127 can pass fp16's 65504: scale the weight before the matmul
        return F.linear(x, dequantize(qweight, scale, torch.float16), None if bias is None else bias.half())
    # fp32 and bf16 have fp32's range: scale the [M, N] output, not the [N, K] weight (cheaper)
    out = F.linear(x, qweight.to(x.dtype)).float() * scale.float()
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)
