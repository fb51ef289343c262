"""One-token decode attention on CPU: the same function as SDPA, and the engine switches to it."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from workers.decode_attention import NAME, cpu_decode_attention, use_cpu_decode_attention


class Layer:
    num_key_value_groups = 1


def reference(q, k, v, mask):
    """SDPA in float64 on expanded GQA heads: [b, q, heads, d]."""
    groups = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(groups, dim=1) for t in (k, v))
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q.double(), k, v, attn_mask=None if mask is None else mask.double())
    return out.transpose(1, 2)


@pytest.mark.parametrize("kv_heads", [6, 2])
@pytest.mark.parametrize("mask_kind", ["float", "bool", "none", "per-head"])
def test_matches_sdpa_on_a_strided_cache_slice(kv_heads, mask_kind):
    gen = torch.Generator().manual_seed(kv_heads)
    rows, heads, length, dim = 5, 6, 40, 16
    cache = torch.randn(rows + 2, kv_heads, 64, dim, generator=gen)  # capacity 64, rows to spare
    k, v = cache[:rows, :, :length], torch.randn(rows, kv_heads, length, dim, generator=gen)
    q = torch.randn(rows, heads, 1, dim, generator=gen)
    lengths = torch.tensor([40, 7, 23, 1, 31])
    visible = torch.arange(length)[None, :] < lengths[:, None]  # [rows, L]
    mask = {"float": torch.zeros(rows, length).masked_fill(~visible, torch.finfo(torch.float32).min)[:, None, None],
            "bool": visible[:, None, None],
            "none": None,
            "per-head": torch.zeros(rows, heads, 1, length).masked_fill(~visible[:, None, None], -1e30)}[mask_kind]
    want = reference(q, k, v, mask)
    got, weights = cpu_decode_attention(Layer(), q.bfloat16(), k.bfloat16(), v.bfloat16(), mask if mask is None or
                                        mask.dtype == torch.bool else mask.bfloat16())
    assert weights is None and got.shape == (rows, 1, heads, dim) and got.dtype == torch.bfloat16
    assert float((got.double() - want).norm() / want.norm()) < 1e-2  # bf16 inputs: rounding only


def test_prefill_and_float32_calls_go_to_sdpa_unchanged():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 8, generator=gen) for n in (5, 5, 5))
    got, _ = cpu_decode_attention(Layer(), q, k, v, None, is_causal=True)  # a 5-token prefill chunk
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    assert torch.allclose(got, want, atol=1e-6)
    one = q[:, :, :1]
    got, _ = cpu_decode_attention(Layer(), one, k, v, None)  # float32: SDPA is the faster path there
    assert torch.allclose(got, F.scaled_dot_product_attention(one, k, v).transpose(1, 2), atol=1e-6)


def test_a_bf16_model_switched_over_generates_as_before():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config).eval().to(torch.bfloat16)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :4] = 0  # left padding: the mask must reach the decode steps
    kw = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, output_logits=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        before = model.generate(ids, **kw)
        assert use_cpu_decode_attention(model) and model.config._attn_implementation == NAME
        after = model.generate(before.sequences[:, :12], **kw)
    # the first step's logits come from the same prefill; the next ones from the new attention
    for step in range(6):
        if not torch.equal(after.sequences[:, : 13 + step], before.sequences[:, : 13 + step]):
            break  # a near-tie flipped in bf16; later steps see other tokens
        a, b = after.logits[step].float(), before.logits[step].float()
        assert float((a - b).norm() / b.norm()) < 2e-2


def test_only_cpu_sdpa_models_are_switched():
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2),
                                             attn_implementation="eager")
    assert not use_cpu_decode_attention(model)
    assert model.config._attn_implementation == "eager"
