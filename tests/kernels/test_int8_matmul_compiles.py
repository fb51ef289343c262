"""The kernel lowers through Triton's real CUDA compiler (to sm_90 PTX and cubin), without a GPU.

The interpreter is lenient about dtypes and tile shapes; this catches what only the compiler
rejects. It compiles the default tile configs the way the runtime would specialise them (unit
K strides, 16-aligned pointers and sizes) and needs only the ptxas that ships in the triton wheel.
"""

from __future__ import annotations

import importlib.util

import pytest

from kernels.int8_matmul import triton_interpreting

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(triton_interpreting(), reason="TRITON_INTERPRET is set: the kernel is not compilable"),
]


def _compile(m: int, act: str, has_bias: bool):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.int8_matmul_triton import _int8_weight_matmul_kernel, default_config

    cfg = default_config(m, 4096, 4096, 4 if act == "fp32" else 2)
    signature = {"x_ptr": f"*{act}", "w_ptr": "*i8", "scale_ptr": "*fp32", "bias_ptr": f"*{act}", "out_ptr": f"*{act}"}
    signature |= {name: "i32" for name in ("M", "N", "K", "stride_xm", "stride_wn", "stride_om")}
    constexprs = {"stride_xk": 1, "stride_wk": 1, "stride_on": 1, "HAS_BIAS": has_bias, "DOT_IN_FP32": act == "fp32",
                  "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m}
    order = ["x_ptr", "w_ptr", "scale_ptr", "bias_ptr", "out_ptr", "M", "N", "K", "stride_xm", "stride_xk",
             "stride_wn", "stride_wk", "stride_om", "stride_on", "HAS_BIAS", "DOT_IN_FP32", "BLOCK_M", "BLOCK_N",
             "BLOCK_K", "GROUP_M"]
    full = {name: signature.get(name, "constexpr") for name in order}
    aligned = ("x_ptr", "w_ptr", "scale_ptr", "bias_ptr", "out_ptr", "N", "K", "stride_xm", "stride_wn", "stride_om")
    attrs = {(order.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(fn=_int8_weight_matmul_kernel, signature=full, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.parametrize("m, act, has_bias", [(1, "bf16", False), (200, "bf16", True), (1, "fp32", True)])
def test_kernel_compiles_for_sm90(m, act, has_bias):
    try:
        compiled = _compile(m, act, has_bias)
    except (ImportError, AttributeError, TypeError) as exc:  # a triton whose compile API differs
        pytest.skip(f"ahead-of-time compile API unavailable in this triton: {exc}")
    assert compiled.asm["cubin"]
