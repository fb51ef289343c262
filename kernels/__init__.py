"""Low-level tensor code: int8 weight-only quantization and its Triton kernel.

Kept import-light: transformers probes for Hugging Face's own `kernels` package by importing a
top-level module of that name, which finds this package. So importing it must not import torch
or triton, and it must not define `__version__` (transformers would read it as that package's
version). Public names resolve lazily on first attribute access:

    from kernels import quantize_model
    model = quantize_model(model)          # every nn.Linear except lm_head -> int8 QuantLinear
"""

from importlib import import_module

_EXPORTS = {
    "quantize_per_channel": "kernels.quant_reference",
    "dequantize": "kernels.quant_reference",
    "int8_weight_linear_reference": "kernels.quant_reference",
    "int8_weight_linear": "kernels.int8_matmul",
    "QuantLinear": "kernels.quant_linear",
    "quantize_model": "kernels.quant_linear",
    "resident_weight_bytes": "kernels.quant_linear",
    "save_quantized": "kernels.quant_checkpoint",
    "load_quantized": "kernels.quant_checkpoint",
    "load_quantized_pretrained": "kernels.quant_checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
