"""QuantLinear, an int8 weight-only drop-in for nn.Linear, and the model-wide swap `quantize_model`.

Quantization is a module swap (gpt-fast style): `model = quantize_model(model)` replaces every plain
nn.Linear, except those named by `skip` and those whose weight is tied to another module, with a
QuantLinear holding int8 codes and per-channel float32 scales. `quantize_head(model)` also swaps
the LM head; a head tied to the input embedding becomes a QuantLinear and a QuantEmbedding that
share one set of codes (per-row scales fit both: a head's output channel is an embedding's row).
The swap is inference-only (no gradients flow to the codes) and runs on whatever device the model is on.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kernels.int8_matmul import int8_weight_linear
from kernels.quant_reference import dequantize, quantize_per_channel

DEFAULT_SKIP = ("lm_head",)


class QuantLinear(nn.Module):
    """y = x @ (qweight * scale[:, None]).T + bias, with qweight int8 [out, in] and scale fp32 [out].

    The tensors are buffers, so they move with `.to(device)` and appear in `state_dict()` as
    `<name>.qweight`, `<name>.scale` and `<name>.bias`. Note that `.to(dtype)` also casts the
    float buffers (scale, bias); the kernel accepts any float dtype for them.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        bias_tensor = torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None
        self.register_buffer("bias", bias_tensor)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "QuantLinear":
        """Quantize an nn.Linear's weight per output channel; the bias is kept in its own dtype."""
        weight = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",  # placeholders only; replaced below without allocating twice
            bias_dtype=weight.dtype if linear.bias is None else linear.bias.dtype,
        )
        if weight.is_meta:  # a skeleton being prepared for load_quantized: keep placeholders
            return layer
        layer.qweight, layer.scale = quantize_per_channel(weight)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_weight_linear(x, self.qweight, self.scale, self.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight these codes stand for (debugging, error measurements)."""
        return dequantize(self.qweight, self.scale, dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class QuantEmbedding(nn.Module):
    """An nn.Embedding read from the int8 codes and per-row scales of a tied LM head's QuantLinear.

    The codes stay the head's buffers alone (the embedding keeps a plain reference to the head,
    not a submodule or buffers of its own), so they are held, counted, copied to host and moved
    to a device once, and whatever replaces the head's tensors (a swap-in) serves both. A looked-up
    row is dequantized in float32 and returned in the embedding's dtype."""

    def __init__(self, head: QuantLinear, dtype: torch.dtype, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.padding_idx, self.dtype = padding_idx, dtype
        object.__setattr__(self, "head", head)  # not registered: see the class docstring

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.head.qweight).float() * self.head.scale[ids].float().unsqueeze(-1)
        return rows.to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8, the LM head's codes"


def quantize_head(model: nn.Module) -> nn.Module:
    """Swap the model's LM head (`get_output_embeddings()`, a plain nn.Linear) for a QuantLinear,
    in place; when the head is tied to a plain nn.Embedding input, that embedding becomes a
    QuantEmbedding of the same codes. Logits then carry int8 rounding (the reason quantize_model
    skips the head by default): for models where the head's bytes and time matter (a small model's
    tied head is a fifth of its weights and of its decode step). Returns `model`."""
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear:
        return model
    embedding = model.get_input_embeddings()
    names = {id(m): name for name, m in model.named_modules()}
    quantized = QuantLinear.from_linear(head)
    if type(embedding) is nn.Embedding and embedding.weight is head.weight:
        model.set_submodule(names[id(embedding)],
                            QuantEmbedding(quantized, embedding.weight.dtype, embedding.padding_idx))
    model.set_submodule(names[id(head)], quantized)
    return model


def matches_skip(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module's qualified name, or any dotted suffix of it, matches one of the globs.

    "lm_head" matches "lm_head" and "model.lm_head"; "mlp.*" matches "model.layers.0.mlp.up_proj";
    "layers.0.*" matches everything under the first layer.
    """
    parts = name.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in suffixes)


def quantizable_linear_names(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Qualified names of the layers `quantize_model` would swap, in module order.

    Only exact nn.Linear instances qualify: subclasses (e.g. torch's MultiheadAttention out_proj)
    are read through `.weight` by their owners. A Linear whose weight is shared with any other
    module (tied embeddings) is left alone: an int8 copy would add bytes, not save them.
    """
    skip = tuple(skip)
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and not matches_skip(name, skip) and owners.get(id(module.weight), 0) == 1
    ]


def quantize_model(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> nn.Module:
    """Swap every eligible nn.Linear of `model` for a QuantLinear, in place; returns `model`.

    `skip` holds glob patterns of module names kept in float (see `matches_skip`); the output head
    is skipped by default because logits are the most quantization-sensitive and it is often tied.
    Layers already quantized are left as they are, so calling this twice is harmless.
    """
    for name in quantizable_linear_names(model, skip):
        model.set_submodule(name, QuantLinear.from_linear(model.get_submodule(name)))
    return model


def quantized_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the QuantLinear layers in `model`."""
    return [name for name, module in model.named_modules() if isinstance(module, QuantLinear)]


def resident_weight_bytes(model: nn.Module, modules: Iterable[str] | None = None) -> int:
    """Bytes held by the model's parameters and buffers, each storage counted once.

    With `modules` (qualified names, e.g. `quantized_module_names(q)`), only the tensors of those
    submodules count: measure the same names on a float and a quantized copy to see what the
    swap saves.
    """
    if modules is None:
        tensors = [*model.parameters(), *model.buffers()]
    else:
        owners = [model.get_submodule(name) for name in modules]
        tensors = [t for m in owners for t in (*m.parameters(), *m.buffers())]
    seen: set[int] = set()
    total = 0
    for t in tensors:
        key = id(t) if t.is_meta else t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.nbytes if t.is_meta else t.untyped_storage().nbytes()
    return total
