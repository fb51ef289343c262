"""Predicting a model's device footprint before loading it: weights + a KV-cache reserve."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.checkpoint import read_model_info

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass(frozen=True)
class Footprint:
    weight_bytes: int  # parameters and buffers in the load dtype
    kv_bytes_per_token: int
    kv_reserve_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_reserve_bytes


def predict_footprint(name: str, path: str | Path, dtype: str, kv_reserve_tokens: int) -> Footprint:
    """From config.json and the safetensors headers only (nothing is loaded)."""
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
    return Footprint(info.parameters * size + buffers, kv_per_token, kv_per_token * kv_reserve_tokens)
