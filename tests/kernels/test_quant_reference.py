"""The pure-torch reference: per-channel symmetric int8 quantization and its round trip."""

from __future__ import annotations

import pytest
import torch

from kernels.quant_reference import dequantize, int8_weight_linear_reference, quantize_per_channel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_error_is_at_most_half_a_step(dtype):
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(64, 200, generator=gen) * torch.logspace(-3, 1, 64)[:, None]).to(dtype)
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (64,) and scale.dtype == torch.float32
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127  # symmetric: -128 never used
    err = (dequantize(q, scale) - w.float()).abs()
    # coarse bf16/fp16 inputs land exactly on half steps; allow fp32 rounding of w / scale beyond that
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())
    # each row's largest magnitude is represented exactly (it maps to +-127)
    row_max = w.float().abs().amax(dim=1)
    torch.testing.assert_close(dequantize(q, scale).abs().amax(dim=1), row_max)


def test_gaussian_weight_relative_error_is_below_one_percent():
    """The expected level on LLM-like weights: |w|max ~ 3.2 sigma, step/sqrt(12) ~ 0.7% of sigma."""
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    q, scale = quantize_per_channel(w)
    rel = float((dequantize(q, scale) - w).norm() / w.norm())
    assert rel < 0.01, rel


def test_zero_rows_quantize_to_zero():
    w = torch.randn(4, 16)
    w[1] = 0.0
    w[3] = 1e-45  # subnormal: max/127 underflows to 0
    q, scale = quantize_per_channel(w)
    assert bool((q[1] == 0).all()) and float(scale[1]) == 0.0
    assert bool(torch.isfinite(scale).all())
    assert bool((dequantize(q, scale)[1] == 0).all())
    assert bool((q[3] == 0).all())


def test_quantize_rejects_bad_weights():
    with pytest.raises(ValueError, match="2-D"):
        quantize_per_channel(torch.randn(4))
    with pytest.raises(TypeError, match="floating"):
        quantize_per_channel(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="inf or nan"):
        quantize_per_channel(torch.tensor([[1.0, float("nan")]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_linear_is_x_times_dequantized_weight(dtype):
    gen = torch.Generator().manual_seed(2)
    q, scale = quantize_per_channel(torch.randn(24, 40, generator=gen))
    x = torch.randn(3, 5, 40, generator=gen).to(dtype)
    bias = torch.randn(24, generator=gen)
    y = int8_weight_linear_reference(x, q, scale, bias)
    assert y.dtype == dtype and y.shape == (3, 5, 24)
    want = x.float() @ (q.float() * scale[:, None]).T + bias
    torch.testing.assert_close(y.float(), want.to(dtype).float())
