"""Predicting a model's device footprint before loading it: weights + a KV-cache reserve."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.checkpoint import read_model_info, tensor_shapes

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass(frozen=True)
class Footprint:
    weight_bytes: int  # parameters and buffers in the load dtype
    kv_bytes_per_token: int
    kv_reserve_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_reserve_bytes


def _int8_weight_bytes(path: str | Path, dtype_bytes: int, head: bool = False) -> int:
    """Weights after weight-only int8: linear layers (2-D weights but the embedding and the LM head,
    which kernels.quant_linear leaves in float) become 1 byte per weight + a float32 scale per row.
    `head` (int8_head): the LM head too, and an embedding tied to it (no lm_head tensor of its own)."""
    shapes = tensor_shapes(path)
    config = json.loads((Path(path) / "config.json").read_text())
    tied = config.get("tie_word_embeddings", not any("lm_head" in name for name in shapes))
    total = 0
    for name, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        linear = len(shape) == 2 and name.endswith(".weight") and "embed" not in name and "lm_head" not in name
        if head and len(shape) == 2 and "lm_head" in name:
            if tied:  # one tensor with the embedding, counted there
                continue
            linear = True
        if head and tied and len(shape) == 2 and "embed_tokens" in name:
            linear = True
        total += count + 4 * shape[0] if linear else count * dtype_bytes
    return total


def predict_footprint(name: str, path: str | Path, dtype: str, kv_reserve_tokens: int,
                      quantization: str | None = None, extra_kv_bytes: int = 0) -> Footprint:
    """From config.json and the safetensors headers only (nothing is loaded). `extra_kv_bytes`:
    KV held beyond the running batch's reserve (the engine's prefix cache)."""
    info = read_model_info(name, path)
    config = json.loads((Path(path) / "config.json").read_text())
    size = DTYPE_BYTES[dtype]
    hidden = int(config.get("hidden_size", 0))
    heads = int(config.get("num_attention_heads", 1))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    layers = int(config.get("num_hidden_layers", 0))
    # rotary inv_freq buffers (and their original copy) in float32: tiny, but counted
    buffers = 2 * (head_dim // 2) * 4
    kv_per_token = 2 * layers * kv_heads * head_dim * size
    weights = (_int8_weight_bytes(path, size, head=quantization == "int8_head") if quantization
               else info.parameters * size)
    return Footprint(weights + buffers, kv_per_token, kv_per_token * kv_reserve_tokens + extra_kv_bytes)
