"""Per-channel symmetric int8 weight quantization: the pure-torch reference.

One scale per output channel (row of an nn.Linear weight [out, in]): scale = max|w| / 127, and
q = round(w / scale) in [-127, 127]. -128 is never produced, so the code is symmetric and negating
a row negates its codes exactly. The Triton kernel in `kernels.int8_matmul` is tested against
`int8_weight_linear_reference`; the quantizer here is the only one (the kernel consumes its output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QMAX = 127


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a float weight [out, in] to (int8 codes [out, in], float32 scales [out]).

    Symmetric and per output channel: scale[n] = max_k |w[n, k]| / 127, so every code lies in
    [-127, 127] and |w - q * scale| <= scale / 2 elementwise. An all-zero row gets scale 0 and
    codes 0 (it dequantizes to exactly zero). Work is done in float32 whatever the input dtype,
    and the result stays on the weight's device.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight contains inf or nan; refusing to quantize it")
    scale = w.abs().amax(dim=1) / QMAX
    # zero rows (and rows so small that max/127 underflows): divide by 1 instead of 0; codes are 0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float weight [out, in] = codes * per-row scale, computed in float32, returned as `dtype`."""
    if qweight.dim() != 2 or scale.dim() != 1 or scale.shape[0] != qweight.shape[0]:
        raise ValueError(f"expected qweight [N, K] and scale [N], got {tuple(qweight.shape)} and {tuple(scale.shape)}")
    return (qweight.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def int8_weight_linear_reference(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ (qweight * scale).T + bias, in float32, returned in x's dtype: the definition kernels match."""
    w = dequantize(qweight, scale, torch.float32)
    b = None if bias is None else bias.to(torch.float32)
    return F.linear(x.to(torch.float32), w, b).to(x.dtype)
