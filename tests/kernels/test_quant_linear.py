"""QuantLinear and quantize_model: module-level behaviour on small torch modules (no zoo needed)."""

from __future__ import annotations

import torch
from torch import nn

from kernels.quant_linear import (
    QuantLinear,
    matches_skip,
    quantizable_linear_names,
    quantize_model,
    quantized_module_names,
    resident_weight_bytes,
)
from kernels.quant_reference import int8_weight_linear_reference


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.block = nn.ModuleDict({"up": nn.Linear(32, 64), "down": nn.Linear(64, 32, bias=False)})
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)  # its out_proj is a Linear subclass
        self.lm_head = nn.Linear(32, 50, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = h + self.block["down"](torch.relu(self.block["up"](h)))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.lm_head(h)


def test_from_linear_matches_reference_and_keeps_bias():
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    layer = QuantLinear.from_linear(linear)
    assert layer.qweight.dtype == torch.int8 and layer.scale.dtype == torch.float32
    torch.testing.assert_close(layer.bias, linear.bias.detach())
    x = torch.randn(3, 7, 40)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), int8_weight_linear_reference(x, layer.qweight, layer.scale, layer.bias))
        assert float((layer(x) - linear(x)).norm() / linear(x).norm()) < 0.02
    assert "int8" in repr(layer)


def test_quantize_model_swaps_plain_linears_except_skipped():
    torch.manual_seed(0)
    model = Toy().eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        before = model(ids)
        assert quantize_model(model) is model
        after = model(ids)
    assert quantized_module_names(model) == ["block.up", "block.down"]
    assert type(model.lm_head) is nn.Linear  # skipped by default
    assert type(model.attn.out_proj) is not QuantLinear  # read through .weight by MultiheadAttention
    assert float((after - before).norm() / before.norm()) < 0.02
    assert quantize_model(model) is model and quantized_module_names(model) == ["block.up", "block.down"]


def test_skip_patterns_and_tied_weights():
    assert matches_skip("lm_head", ["lm_head"]) and matches_skip("model.lm_head", ["lm_head"])
    assert matches_skip("model.layers.0.mlp.up_proj", ["mlp.*"])
    assert matches_skip("model.layers.0.mlp.up_proj", ["layers.0.*"])
    assert not matches_skip("model.layers.10.mlp.up_proj", ["layers.1.*"])
    assert not matches_skip("model.lm_head_extra", ["lm_head"])

    model = Toy()
    assert quantizable_linear_names(model, skip=["block.*"]) == ["lm_head"]
    model.lm_head.weight = model.embed.weight  # tied: an int8 copy would add bytes, not save them
    assert "lm_head" not in quantizable_linear_names(model, skip=())


def test_resident_weight_bytes_of_quantized_layers():
    model = Toy()
    names = ["block.up", "block.down"]
    float_bytes = resident_weight_bytes(model, names)
    assert float_bytes == 4 * (32 * 64 + 64 + 64 * 32)
    quantize_model(model)
    # int8 codes, one fp32 scale per output channel, the fp32 bias kept as it was
    assert resident_weight_bytes(model, names) == (32 * 64 + 64 * 32) + 4 * (64 + 32) + 4 * 64
    assert resident_weight_bytes(model) < resident_weight_bytes(Toy())


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def test_quantize_head_of_a_tied_model_shares_one_set_of_codes():
    from kernels.quant_linear import QuantEmbedding, quantize_head

    model = _tiny_llama(tied=True)
    ids = torch.tensor([[1, 5, 9, 33, 95]])
    with torch.inference_mode():
        want = model(ids).logits
    dense_bytes = resident_weight_bytes(model)
    quantize_head(quantize_model(model))
    head, embedding = model.lm_head, model.model.embed_tokens
    assert isinstance(head, QuantLinear) and isinstance(embedding, QuantEmbedding)
    assert embedding.head is head and not list(embedding.buffers())  # the codes live in the head alone
    # every linear and the shared table at a byte per weight (+ scales): the 96x32 table once
    assert resident_weight_bytes(model) < 0.4 * dense_bytes
    with torch.inference_mode():
        rows = embedding(ids)
        got = model(ids).logits
    torch.testing.assert_close(rows, head.dequantized_weight()[ids])  # a lookup is the head's row
    assert float((got - want).norm() / want.norm()) < 3e-2
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_quantize_head_of_an_untied_model_keeps_the_embedding():
    from kernels.quant_linear import quantize_head

    model = quantize_head(_tiny_llama(tied=False))
    assert isinstance(model.lm_head, QuantLinear) and type(model.model.embed_tokens) is nn.Embedding
