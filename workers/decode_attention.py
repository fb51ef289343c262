"""Attention for one-token decode steps on CPU, registered with transformers' AttentionInterface.

A decode step asks each sequence's single new query to attend over its whole KV row. PyTorch's
CPU `scaled_dot_product_attention` runs its flash kernel for this too, which is built for long
queries: for one query per row it measured 5x slower than two matrix products and a softmax in
bf16 (16 rows x 6 heads x 150-600 positions, one core: 1.3-3.2 ms against 0.24-0.67 ms); in a
16-row bf16 step of mux-20m it was 65% of the step. In fp32 SDPA is the faster of the two (up to
2x at one row), so fp32 models keep it.

`cpu_decode_attention` does what transformers' own eager attention does (scores in the model's
dtype, softmax in fp32, the same additive mask), for a query length of one on CPU in half
precision, without copying K/V for grouped-query heads (the query is regrouped instead). Everything else (prefill
chunks, GPUs, features it does not implement) goes to transformers' SDPA path unchanged, and
masks are built as for SDPA. `use_cpu_decode_attention(model)` switches a loaded model over; the
engine does that for CPU models, so `model.generate` on the same model object uses it as well.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "muxgate_cpu_decode"

# keyword arguments that change the math; with any of them set, SDPA's path handles the call
_UNSUPPORTED = ("softcap", "position_bias", "s_aux", "sinks", "output_attentions")


def cpu_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                         scaling: float | None = None, **kwargs):
    """query [b, heads, q, d], key/value [b, kv_heads, L, d] -> ([b, q, heads, d], None)."""
    if (query.shape[2] != 1 or query.device.type != "cpu" or query.dtype == torch.float32 or dropout
            or any(kwargs.get(k) is not None and kwargs.get(k) is not False for k in _UNSUPPORTED)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    q = query.reshape(batch, kv_heads, groups, dim)  # a row's query heads, grouped by the KV head they read
    # K @ q^T rather than q @ K^T: the same products, but the long operand is read in its own
    # layout (in bf16 on CPU 2-5x faster for one query, most of all on a strided cache slice)
    scores = torch.matmul(key, q.transpose(-1, -2)).transpose(-1, -2) * scale  # [b, kv_heads, groups, L]
    if attention_mask is not None:
        mask = attention_mask[..., :length]
        if mask.dtype == torch.bool:  # True = may attend
            mask = torch.zeros(mask.shape, dtype=scores.dtype).masked_fill_(~mask, torch.finfo(scores.dtype).min)
        # [b, 1 | heads, 1, L] -> broadcastable over the grouped scores
        scores = scores + (mask.reshape(batch, 1, 1, length) if mask.shape[1] == 1
                           else mask.reshape(batch, kv_heads, groups, length))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [b, kv_heads, groups, d]
    return out.reshape(batch, 1, heads, dim), None


AttentionInterface.register(NAME, cpu_decode_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_cpu_decode_attention(model) -> bool:
    """Switch a model that runs SDPA attention on CPU to `cpu_decode_attention`; False (model
    unchanged) for any other implementation or a model that cannot switch."""
    current = getattr(model.config, "_attn_implementation", None)
    if current == NAME:
        return True
    if current != "sdpa" or model.device.type != "cpu":
        return False
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):
        return False
    return model.config._attn_implementation == NAME
