"""Quantized checkpoints: save, load without float weights, identical logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels.quant_checkpoint import WEIGHTS_FILE, load_quantized, load_quantized_pretrained, save_quantized
from kernels.quant_linear import QuantLinear, quantize_model, quantized_module_names, resident_weight_bytes


def _load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_gives_identical_logits(zoo_dir, tmp_path, dtype):
    path = zoo_dir / "mux-2m"
    model = quantize_model(_load(path, dtype))
    save_quantized(model, tmp_path)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))

    rebuilt = load_quantized_pretrained(tmp_path)  # from config.json, no float weights allocated
    into_float = load_quantized(_load(path, dtype), tmp_path)  # into an already loaded float model
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        assert torch.equal(rebuilt(input_ids=ids).logits, want)
        assert torch.equal(into_float(input_ids=ids).logits, want)
    assert quantized_module_names(rebuilt) == quantized_module_names(model)
    assert not any(t.is_meta for t in (*rebuilt.parameters(), *rebuilt.buffers()))
    # the file holds exactly the resident int8 state (plus a JSON header), less than the float model
    file_bytes = (tmp_path / WEIGHTS_FILE).stat().st_size
    assert 0 <= file_bytes - resident_weight_bytes(model) < 64 * 1024
    assert file_bytes < resident_weight_bytes(_load(path, dtype))


def test_transformers_refuses_the_quantized_directory(zoo_dir, tmp_path):
    """No model.safetensors in it: from_pretrained must fail, not build a model with random weights."""
    save_quantized(quantize_model(_load(zoo_dir / "mux-2m")), tmp_path)
    with pytest.raises(OSError):
        _load(tmp_path)


def test_tied_weights_are_stored_once_and_reloaded_shared(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(30, 16)
            self.proj = nn.Linear(16, 16)
            self.head = nn.Linear(16, 30, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.proj(self.embed(ids)))

    torch.manual_seed(0)
    model = quantize_model(Tied(), skip=())
    assert isinstance(model.proj, QuantLinear) and type(model.head) is nn.Linear  # tied: left in float
    save_quantized(model, tmp_path)
    with torch.device("meta"):
        skeleton = Tied()
    loaded = load_quantized(skeleton, tmp_path)
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    ids = torch.arange(10)[None]
    with torch.inference_mode():
        assert torch.equal(loaded(ids), model(ids))


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no QuantLinear layers"):
        save_quantized(nn.Sequential(nn.Linear(4, 4)), tmp_path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="not a muxgate int8 checkpoint"):
        load_quantized(nn.Sequential(nn.Linear(4, 4)), tmp_path)
