"""Weight tiers below the device: host memory (warm) and disk (cold).

A model's host copy holds every parameter and buffer (non-persistent ones too, which
checkpoints do not carry), in buffers allocated once per model and reused for as long as the
model stays warm; on GPU machines they are pinned, so host -> device is one DMA per tensor.
Pinning happens in the background after a load, never on a request's critical path.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

# Resolved here, at import, on the importing thread: transformers' lazy module is not safe to
# resolve from several loader threads at once (concurrent loads raised ImportError).
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # a bar per load floods a server's logs

log = logging.getLogger(__name__)


@dataclass
class HostWeights:
    tensors: dict[str, torch.Tensor]
    nbytes: int
    pinned: bool
    ready: bool = True  # False while the background copy runs (its bytes are already counted)


def _named_tensors(model):
    return itertools.chain(model.named_parameters(), model.named_buffers())


def tensor_bytes(model) -> int:
    """Bytes of every parameter and buffer: what the model really occupies on its device."""
    return sum(t.numel() * t.element_size() for _, t in _named_tensors(model))


def copy_to_host(model, pin: bool) -> HostWeights:
    """Allocate host buffers once (pinned if asked) and copy the model's tensors into them."""
    tensors = {}
    for name, t in _named_tensors(model):
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
        host.copy_(t.detach())
        tensors[name] = host
    return HostWeights(tensors, sum(t.numel() * t.element_size() for t in tensors.values()), pin)


def quantize(model, quantization: str | None):
    """Apply the configured weight-only quantization (a module swap; see kernels.quant_linear)."""
    if quantization is None:
        return model
    if quantization != "int8":
        raise ValueError(f"unknown quantization {quantization!r}")
    from kernels.quant_linear import quantize_model

    return quantize_model(model)


def load_cold(path: str, dtype: torch.dtype, device: str, quantization: str | None = None):
    """Disk -> device. transformers builds the model (its class, key conversions, tied weights,
    non-persistent buffers, dtype: the code that loads any user's checkpoint) from tensors that
    are views of the checkpoint's files, while a reader thread reads every byte of them in one
    sequential pass (workers/cold_read.py). Returns when all weights are in memory: transformers'
    own loader would map the files lazily and leave the reading to the first forward pass."""
    from workers.cold_read import EagerReader, checkpoint_files

    files = checkpoint_files(path)
    config = AutoConfig.from_pretrained(path)
    model_class = _causal_lm_class(config)
    if not files or model_class is None:  # a .bin checkpoint, an unknown architecture: transformers
        return _from_pretrained(path, dtype, device, quantization)
    reader = EagerReader(files)
    try:
        model = model_class.from_pretrained(None, config=config, state_dict=reader.state_dict(), dtype=dtype)
        model.config.name_or_path = model.name_or_path = path
        if (Path(path) / "generation_config.json").exists():
            model.generation_config = GenerationConfig.from_pretrained(path)
    finally:
        reader.wait()
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
        model = quantize(AutoModelForCausalLM.from_pretrained(path, dtype=dtype), quantization)
        return model.to(device).eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device if device != "cpu" else None)
    return model.eval()


def load_warm(path: str, dtype: torch.dtype, device: str, host: HostWeights, quantization: str | None = None):
    """Host -> device: a skeleton on the meta device (no init cost), then one copy per tensor."""
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = quantize(AutoModelForCausalLM.from_config(config, dtype=dtype), quantization)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, t in _named_tensors(model):
            t.copy_(host.tensors[name], non_blocking=host.pinned)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return model.eval()


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
    with torch.device("meta"):
        AutoModelForCausalLM.from_config(config)
