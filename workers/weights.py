"""Weight tiers below the device: host memory (warm) and disk (cold).

A model's host copy holds every parameter and buffer (non-persistent ones too, which
checkpoints do not carry) in one flat buffer allocated once per model and reused for as long as
the model stays warm; on GPU machines it is pinned. A swap-in allocates one device buffer of the
same layout and fills it with one copy (one DMA on a GPU, so it runs at the link's raw pinned
rate), then points the model's tensors at views of it. The model object itself is kept, its
tensors on the meta device, while it is warm (`HostTier.retire`), so a swap-in builds nothing.
Pinning happens in the background after a load, never on a request's critical path.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Resolved here, at import, on the importing thread: transformers' lazy module is not safe to
# resolve from several loader threads at once (concurrent loads raised ImportError).
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # a bar per load floods a server's logs

# transformers builds a model under process-wide patches: `PreTrainedModel.tie_weights` replaced by a
# no-op, torch's default dtype and init functions swapped, each put back on exit. Two builds that
# overlap in loader threads restore each other's patches in the wrong order and can leave tying off
# for the whole process (every later tied model gets a random head) or a model in the wrong dtype.
# Every build in this process (from_pretrained, from_config) takes this lock; reading the bytes
# and moving them to the device stay outside it, so concurrent loads still overlap their I/O.
BUILD_LOCK = threading.Lock()

log = logging.getLogger(__name__)


# Offsets of tensors inside a flat buffer are multiples of this: every view starts as aligned as
# a fresh allocation would for the vectorised loads of matmul kernels.
_ALIGN = 256


@dataclass
class HostWeights:
    tensors: dict[str, torch.Tensor]  # views into `flat`, by the model's tensor names
    nbytes: int
    pinned: bool
    ready: bool = True  # False while the background copy runs (its bytes are already counted)
    flat: torch.Tensor | None = None  # one uint8 buffer holding every tensor at its offset
    offsets: dict[str, int] = field(default_factory=dict)
    shell: object | None = None  # the evicted model object, tensors on meta: a skeleton to refill


def _named_tensors(model):
    return itertools.chain(model.named_parameters(), model.named_buffers())


def _layout(tensors) -> tuple[dict[str, int], int]:
    """Aligned offsets of (name, tensor) pairs packed into one buffer, and its size in bytes."""
    offsets, size = {}, 0
    for name, t in tensors:
        offsets[name] = size
        size += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    return offsets, size


def _view(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    nbytes = like.numel() * like.element_size()
    return flat[offset:offset + nbytes].view(like.dtype).view(like.shape)


def tensor_bytes(model) -> int:
    """Bytes of every parameter and buffer: what the model really occupies on its device."""
    return sum(t.numel() * t.element_size() for _, t in _named_tensors(model))


def copy_to_host(model, pin: bool) -> HostWeights:
    """Allocate one host buffer (pinned if asked) and copy the model's tensors into it."""
    named = list(_named_tensors(model))
    offsets, size = _layout(named)
    flat = torch.empty(size, dtype=torch.uint8, device="cpu", pin_memory=pin)
    tensors = {}
    for name, t in named:
        tensors[name] = _view(flat, offsets[name], t)
        tensors[name].copy_(t.detach())
    return HostWeights(tensors, size, pin, flat=flat, offsets=offsets)


QUANTIZATIONS = ("int8", "int8_head")


def quantize(model, quantization: str | None):
    """Apply the configured weight-only quantization (a module swap; see kernels.quant_linear):
    `int8` the linear layers but the LM head, `int8_head` the LM head too (a tied one shares its
    codes with the input embedding)."""
    if quantization is None:
        return model
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}")
    from kernels.quant_linear import quantize_head, quantize_model

    model = quantize_model(model)
    return quantize_head(model) if quantization == "int8_head" else model


def load_cold(path: str, dtype: torch.dtype, device: str, quantization: str | None = None):
    """Disk -> device. transformers builds the model (its class, key conversions, tied weights,
    non-persistent buffers, dtype: the code that loads any user's checkpoint) from tensors that
    are views of the checkpoint's files, while a reader thread reads every byte of them in one
    sequential pass (workers/cold_read.py). Returns when all weights are in memory: transformers'
    own loader would map the files lazily and leave the reading to the first forward pass."""
    from workers import gguf
    from workers.cold_read import EagerReader, checkpoint_files

    files = checkpoint_files(path)
    config = AutoConfig.from_pretrained(path)
    model_class = _causal_lm_class(config)
    if gguf.is_gguf_dir(path):  # packed bytes read from the GGUF file, dequantized into `dtype`
        return _build(path, model_class, config, gguf.load_state_dict(path, dtype, config), dtype, device, quantization)
    if not files or model_class is None:  # a .bin checkpoint, an unknown architecture: transformers
        return _from_pretrained(path, dtype, device, quantization)
    reader = EagerReader(files)
    try:
        return _build(path, model_class, config, reader.state_dict(), dtype, device, quantization)
    finally:
        reader.wait()


def _build(path: str, model_class, config, state_dict: dict, dtype: torch.dtype, device: str,
           quantization: str | None):
    """The model transformers builds from `state_dict`, on `device`, quantized if asked."""
    with BUILD_LOCK:
        model = model_class.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype)
    model.config.name_or_path = model.name_or_path = path
    if (Path(path) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    if quantization is not None:  # quantize on the host: the device never holds the float weights
        model = quantize(model, quantization)
    if device != "cpu":
        model = model.to(device)
    return model.eval()


def _causal_lm_class(config):
    """The class AutoModelForCausalLM picks for this config (None: leave it to from_pretrained)."""
    from transformers.models.auto.auto_factory import _get_model_class

    try:
        return _get_model_class(config, AutoModelForCausalLM._model_mapping)
    except KeyError:
        return None


def _from_pretrained(path: str, dtype: torch.dtype, device: str, quantization: str | None):
    if quantization is not None:
        with BUILD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return quantize(model, quantization).to(device).eval()
    with BUILD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device if device != "cpu" else None)
    return model.eval()


def load_warm(path: str, dtype: torch.dtype, device: str, host: HostWeights, quantization: str | None = None):
    """Host -> device: one buffer of the host copy's layout, filled by one copy; the model's
    tensors become views of it. The model is the one kept when it was evicted (its tensors on the
    meta device), else a skeleton built on the meta device (no init cost)."""
    # the copy first: from pinned memory it is asynchronous, so the Python work below (the
    # skeleton, the views) runs while the bytes move
    flat = torch.empty(host.flat.numel(), dtype=torch.uint8, device=device)
    flat.copy_(host.flat, non_blocking=host.pinned)
    model, host.shell = host.shell, None
    if model is None:
        config = AutoConfig.from_pretrained(path)
        with BUILD_LOCK, torch.device("meta"):
            model = quantize(AutoModelForCausalLM.from_config(config, dtype=dtype), quantization)
    named = list(_named_tensors(model))
    if {n for n, _ in named} != set(host.offsets):
        raise ValueError(f"{path}: the host copy's tensors do not match the model's")
    _replace_tensors(model, {id(t): _view(flat, host.offsets[name], host.tensors[name]) for name, t in named})
    model.eval()  # before the wait: it walks every module, time the copy hides
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return model


def to_shell(model):
    """Replace every tensor of a model by one on the meta device: its memory is released at once
    and the object stays a skeleton that `load_warm` can refill."""
    _replace_tensors(model, {id(t): torch.empty_like(t, device="meta") for _, t in _named_tensors(model)})
    return model


def _replace_tensors(model, new_by_old_id: dict[int, torch.Tensor]) -> None:
    """Put new tensors in place of old ones in every module that holds them, so a tensor shared
    by several modules (tied weights) stays one shared tensor."""
    params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for key, old in module._parameters.items():
            if old is not None:
                if id(old) not in params:
                    params[id(old)] = nn.Parameter(new_by_old_id[id(old)], requires_grad=False)
                module._parameters[key] = params[id(old)]
        for key, old in module._buffers.items():
            if old is not None:
                module._buffers[key] = new_by_old_id[id(old)]


class HostTier:
    """Warm copies of models' weights within a byte capacity; least recently used leave first."""

    def __init__(self, capacity: int, pin: bool):
        self.capacity = int(capacity)
        self.pin = pin
        self._entries: OrderedDict[str, HostWeights] = OrderedDict()
        self._lock = threading.Lock()
        self.demotions = 0  # host copies dropped to make room (those models are cold again)

    def used(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def get(self, name: str) -> HostWeights | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or not entry.ready:
                return None
            self._entries.move_to_end(name)
            return entry

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def make_room(self, name: str, nbytes: int, protected: set[str] = frozenset()) -> bool:
        """Drop least recently used copies (other than `name` and `protected`) until `nbytes` fit."""
        if nbytes > self.capacity:
            return False
        with self._lock:
            while sum(e.nbytes for e in self._entries.values()) + nbytes > self.capacity:
                victim = next((n for n in self._entries if n != name and n not in protected), None)
                if victim is None:
                    return False
                del self._entries[victim]
                self.demotions += 1
            return True

    def put(self, name: str, weights: HostWeights) -> None:
        with self._lock:
            self._entries[name] = weights

    def retire(self, name: str, model) -> bool:
        """An evicted model: keep its object (tensors moved to meta) with its host copy, so the
        next swap-in skips building a skeleton. False (model untouched) if it has no host copy."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or not entry.ready:
                return False
            entry.shell = to_shell(model)
            return True

    def snapshot_async(self, name: str, model, protected: set[str] = frozenset()) -> threading.Thread | None:
        """Copy a freshly loaded model to host in the background, if the tier has room for it."""
        nbytes = tensor_bytes(model)
        if name in self or not self.make_room(name, nbytes, protected):
            return None
        self.put(name, HostWeights({}, nbytes, self.pin, ready=False))  # hold the room while copying

        def run():
            started = time.perf_counter()
            try:
                self.put(name, copy_to_host(model, self.pin))
                log.info("host copy of %s in %.2fs", name, time.perf_counter() - started)
            except Exception:
                log.exception("host copy of %s failed; it stays cold", name)
                with self._lock:
                    self._entries.pop(name, None)

        thread = threading.Thread(target=run, name=f"host-copy-{name}", daemon=True)
        thread.start()
        return thread


def load_tokenizer(path: str):
    return AutoTokenizer.from_pretrained(path)


def warm_up(path: str) -> None:
    """Pay a process's one-time loading costs (transformers' lazy imports of the tokenizer and
    model code, the chat-template compiler, the engine's modules) now rather than in the first
    request's load: about a second on a small CPU. Reads no weights."""
    import workers.engine  # noqa: F401

    load_tokenizer(path).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    config = AutoConfig.from_pretrained(path)
    with BUILD_LOCK, torch.device("meta"):
        AutoModelForCausalLM.from_config(config)
