"""Quantized checkpoints: a model's int8 state in one safetensors file, loadable without float weights.

A quantized directory holds `quantized-int8.safetensors` (every parameter and persistent buffer,
the QuantLinear layers as int8 codes + float32 scales) and, when the model has a Hugging Face
config, `config.json`. The weights file is deliberately not named `model.safetensors`: transformers'
`from_pretrained` must fail loudly on this directory rather than load a model missing its weights.
The file's metadata names the quantized layers, so loading rebuilds the same module swap.

Loading builds a skeleton whose parameters live on the meta device (no float weights allocated),
swaps in QuantLinear placeholders, and assigns the stored tensors: the pool moves about half the
bytes of a bf16 checkpoint (a quarter of fp32) between disk, host and GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kernels.quant_linear import QuantLinear, quantized_module_names

WEIGHTS_FILE = "quantized-int8.safetensors"
FORMAT = "muxgate-int8-per-channel-v1"


def save_quantized(model: nn.Module, directory: str | Path) -> Path:
    """Write a quantized model's state (and its HF configs, if any) to `directory`; returns the file.

    Tensors that share storage (tied weights) are stored once and recorded as aliases.
    """
    names = quantized_module_names(model)
    if not names:
        raise ValueError("model has no QuantLinear layers; call kernels.quantize_model(model) first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    # non-persistent buffers (rotary inv_freq) are computed at construction; storing them (bytes, not
    # megabytes) lets the loader build its skeleton entirely on the meta device
    non_persistent = {name: buf for name, buf in model.named_buffers() if name not in state}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_view: dict[tuple, str] = {}
    for key, tensor in (*state.items(), *non_persistent.items()):
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if view in first_by_view:
            aliases[key] = first_by_view[view]
            continue
        first_by_view[view] = key
        tensors[key] = tensor.detach().to("cpu").contiguous()
    metadata = {
        "format": FORMAT,
        "quantized_modules": json.dumps(names),
        "aliases": json.dumps(aliases),
        "non_persistent_buffers": json.dumps(sorted(non_persistent)),
    }
    path = directory / WEIGHTS_FILE
    save_file(tensors, str(path), metadata=metadata)
    for hf_config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if hf_config is not None and hasattr(hf_config, "save_pretrained"):
            hf_config.save_pretrained(str(directory))
    return path


def load_quantized(model: nn.Module, directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a `save_quantized` directory into `model` (same architecture, float, on meta or any device).

    The stored quantized layers replace the matching nn.Linear modules, every tensor is assigned
    (not copied) from the file onto `device`, and the model is returned in eval mode on `device`.
    Raises ValueError if the file is not a muxgate int8 checkpoint or leaves any tensor unset.
    """
    path = Path(directory) / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a muxgate int8 checkpoint (format {metadata.get('format')!r})")
    for name in json.loads(metadata["quantized_modules"]):
        module = model.get_submodule(name)
        if not isinstance(module, (nn.Linear, QuantLinear)):
            raise ValueError(f"{path} quantizes {name!r}, but that module is a {type(module).__name__}")
        placeholder = QuantLinear(module.in_features, module.out_features, module.bias is not None, device="meta")
        model.set_submodule(name, placeholder)
    state = load_file(str(path), device=str(device))
    for alias, target in json.loads(metadata["aliases"]).items():
        state[alias] = state[target]
    for name in json.loads(metadata["non_persistent_buffers"]):
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, state.pop(name), persistent=False)
    model.load_state_dict(state, strict=True, assign=True)
    unset = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unset:
        raise ValueError(f"after loading {path}, these tensors are still on the meta device: {unset[:5]}")
    return model.eval()


def load_quantized_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build the transformers causal LM described by `directory/config.json` and load its int8 state.

    No float weights are allocated: the model is built on the meta device, then every tensor,
    non-persistent buffers included, is assigned from the file.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(str(directory))
    with torch.device("meta"):  # thread-local: other threads keep allocating normally
        model = AutoModelForCausalLM.from_config(config)
    if (Path(directory) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(directory))
    return load_quantized(model, directory, device)
