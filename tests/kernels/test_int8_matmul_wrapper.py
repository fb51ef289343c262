"""The typed wrapper: input checks, dispatch, and the pure-torch serving path (no triton needed)."""

from __future__ import annotations

import os

import pytest
import torch

from kernels.int8_matmul import choose_backend, int8_weight_linear
from kernels.quant_reference import int8_weight_linear_reference, quantize_per_channel


def _layer(n: int = 12, k: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, scale = quantize_per_channel(torch.randn(n, k, generator=gen))
    return q, scale, torch.randn(n, generator=gen)


@pytest.mark.parametrize(
    "dtype, tol",
    # outputs are ~5 here: a few ulps of the activation dtype at that magnitude
    [(torch.float32, dict(rtol=1e-5, atol=1e-5)), (torch.bfloat16, dict(rtol=2e-2, atol=1e-1)),
     (torch.float16, dict(rtol=2e-3, atol=2e-2))],
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_torch_path_matches_reference(dtype, tol, with_bias):
    q, scale, bias = _layer()
    bias = bias.to(dtype) if with_bias else None
    x = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = int8_weight_linear(x, q, scale, bias, backend="torch")
    assert y.dtype == dtype and y.shape == (2, 3, 12)
    torch.testing.assert_close(y.float(), int8_weight_linear_reference(x, q, scale, bias).float(), **tol)


def test_fp16_torch_path_does_not_overflow():
    """Unscaled sums of int8 codes pass fp16's 65504; the fp16 path must scale first."""
    k = 4096
    q = torch.full((2, k), 127, dtype=torch.int8)
    scale = torch.full((2,), 1e-3)
    x = torch.ones(1, k, dtype=torch.float16)
    y = int8_weight_linear(x, q, scale, backend="torch")
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y.float(), torch.full((1, 2), 127 * 1e-3 * k), rtol=2e-3, atol=0)


def test_edge_shapes():
    q, scale, bias = _layer()
    assert int8_weight_linear(torch.randn(0, 20), q, scale, bias).shape == (0, 12)
    assert int8_weight_linear(torch.randn(20), q, scale, bias).shape == (12,)
    strided = torch.randn(4, 40)[:, ::2]
    torch.testing.assert_close(int8_weight_linear(strided, q, scale), int8_weight_linear_reference(strided, q, scale))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(x=torch.ones(3, 20, dtype=torch.float64)), TypeError, "x must be float16, bfloat16 or float32"),
        (dict(x=torch.ones(3, 20, dtype=torch.int32)), TypeError, "x must be"),
        (dict(x=torch.ones(3, 21)), ValueError, "last dimension must be K=20"),
        (dict(q=lambda q: q.float()), TypeError, "qweight must be int8"),
        (dict(q=lambda q: q[None]), ValueError, "qweight must be 2-D"),
        (dict(q=lambda q: q.t().contiguous().t()), ValueError, "contiguous along K"),
        (dict(scale=lambda s: s[:-1]), ValueError, r"scale must have shape \[N\]=\(12,\)"),
        (dict(scale=lambda s: s.to(torch.int32)), TypeError, "scale must be a floating-point"),
        (dict(bias=torch.ones(11)), ValueError, r"bias must have shape \[N\]"),
        (dict(bias=torch.ones(12, dtype=torch.int64)), TypeError, "bias must be a floating-point"),
        (dict(bias=torch.ones(12, device="meta")), ValueError, "one device"),
    ],
)
def test_wrapper_rejects_bad_inputs(change, error, match):
    q, scale, _ = _layer()
    x = change.get("x", torch.randn(3, 20))
    if "q" in change:
        q = change["q"](q)
    if "scale" in change:
        scale = change["scale"](scale)
    with pytest.raises(error, match=match):
        int8_weight_linear(x, q, scale, change.get("bias"))


def test_wrapper_rejects_transposed_weight_view():
    q, scale, _ = _layer(n=20, k=20)
    with pytest.raises(ValueError, match="contiguous along K"):
        int8_weight_linear(torch.randn(2, 20), q.t(), scale)


def test_dispatch_rules(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert choose_backend(torch.device("cpu")) == "torch"
    assert choose_backend(torch.device("cpu"), "torch") == "torch"
    with pytest.raises(ValueError, match="backend must be"):
        choose_backend(torch.device("cpu"), "cuda")
    with pytest.raises(RuntimeError, match="triton"):
        choose_backend(torch.device("cpu"), "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m", [1, 16, 77, 300])
def test_triton_on_cuda_matches_reference(dtype, m):
    pytest.importorskip("triton")
    gen = torch.Generator(device="cuda").manual_seed(m)
    q, scale = quantize_per_channel(torch.randn(520, 1000, device="cuda", generator=gen) * 0.02)
    bias = torch.randn(520, device="cuda", generator=gen).to(dtype)
    x = torch.randn(m, 1000, device="cuda", generator=gen).to(dtype)
    assert choose_backend(x.device) == "triton"
    y = int8_weight_linear(x, q, scale, bias)
    want = int8_weight_linear_reference(x, q, scale, bias)
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert float((y.float() - want.float()).norm() / want.float().norm()) < tol


@pytest.mark.parametrize("dtype, tol", [(torch.float32, dict(rtol=1e-5, atol=1e-4)),
                                        (torch.bfloat16, dict(rtol=2e-2, atol=2e-1))])
@pytest.mark.parametrize("rows", [1, 4, 8])
def test_cpu_int8pack_path_matches_reference(dtype, tol, rows):
    """K a multiple of 16 (a real model's shapes): bf16 decode rows run torch's int8 weight-only
    kernel, more rows and float32 the cast path; every one gives the reference's answer."""
    q, scale, bias = _layer(n=48, k=64)
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = int8_weight_linear(x, q, scale, bias.to(dtype), backend="torch")
    assert y.dtype == dtype and y.shape == (rows, 48)
    torch.testing.assert_close(y.float(), int8_weight_linear_reference(x, q, scale, bias.to(dtype)).float(), **tol)
