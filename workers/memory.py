"""Device memory: what a replica may use, and what the device really has free.

`DeviceMemory` is the seam: NVML (pynvml) on GPUs, a byte budget accounted exactly elsewhere.
The pool keeps its own exact ledger of what it reserved (`ByteLedger`) and, on a GPU, also
checks the device's real free memory, which other processes share.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Protocol

log = logging.getLogger(__name__)


class DeviceMemory(Protocol):
    """A device as the pool checks it before a load (NvmlMemory; a fake in tests)."""

    def total(self) -> int: ...

    def used(self) -> int: ...

    def free(self) -> int: ...

    def held(self) -> int: ...

    def release_cached(self) -> None: ...


class ByteLedger:
    """An exact byte budget: reservations are taken and returned, never estimated."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._reserved: dict[str, int] = {}
        self._lock = threading.Lock()

    def total(self) -> int:
        return self.capacity

    def used(self) -> int:
        with self._lock:
            return sum(self._reserved.values())

    def free(self) -> int:
        return self.capacity - self.used()

    def reserve(self, owner: str, nbytes: int) -> bool:
        """Take `nbytes` for `owner` if they fit; all or nothing."""
        with self._lock:
            if sum(self._reserved.values()) + nbytes > self.capacity:
                return False
            self._reserved[owner] = self._reserved.get(owner, 0) + nbytes
            return True

    def release(self, owner: str) -> int:
        with self._lock:
            return self._reserved.pop(owner, 0)

    def holders(self) -> dict[str, int]:
        with self._lock:
            return dict(self._reserved)


class NvmlMemory:
    """A GPU's memory as NVML reports it: all processes' usage, not just ours.

    `index` is the CUDA device as this process numbers it; NVML numbers GPUs physically and ignores
    CUDA_VISIBLE_DEVICES (which Ray sets per replica), so the GPU is found by what names it
    exactly: torch's device UUID, else its PCI bus id, else the CUDA_VISIBLE_DEVICES entry (an
    index, a `GPU-` UUID or a prefix of one, a `MIG-` UUID). `props`: torch's device properties,
    `visible`: CUDA_VISIBLE_DEVICES (read when not given), `nvml`: the pynvml module (a fake in
    tests); `held` / `release_cached`: the bytes this process's allocator holds on the device and
    giving its unused cache back (torch's, by default).
    """

    def __init__(self, index: int = 0, *, nvml=None, props=None, visible: str | None = None,
                 held: Callable[[], int] | None = None, release_cached: Callable[[], None] | None = None):
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        self._nvml = nvml
        self.index = index
        if visible is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._handle = nvml_device(nvml, index, props, visible)
        self.uuid = _text(nvml.nvmlDeviceGetUUID(self._handle))
        self.name = _text(nvml.nvmlDeviceGetName(self._handle))
        self._held = held or (lambda: _torch_reserved(index))
        self._release_cached = release_cached or _torch_empty_cache

    def _info(self):
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle)

    def total(self) -> int:
        return int(self._info().total)

    def used(self) -> int:
        return int(self._info().used)

    def free(self) -> int:
        return int(self._info().free)

    def held(self) -> int:
        """Bytes this process's allocator holds on the device (in NVML's `used` already)."""
        return int(self._held())

    def release_cached(self) -> None:
        """Give the allocator's unused cached blocks back to the device, so NVML sees them free."""
        self._release_cached()


def nvml_device(nvml, index: int, props=None, visible: str | None = None):
    """NVML's handle for the CUDA device `index` of this process (see NvmlMemory)."""
    errors = (getattr(nvml, "NVMLError", Exception),)
    uuid = getattr(props, "uuid", None) if props is not None else None
    if uuid:  # torch prints the UUID bare; NVML wants GPU-… (or MIG-… for a MIG instance)
        text = _text(uuid)
        for candidate in ([text] if text.startswith(("GPU-", "MIG-")) else [f"GPU-{text}", f"MIG-{text}"]):
            try:
                return nvml.nvmlDeviceGetHandleByUUID(candidate)
            except errors:
                pass
    bus = getattr(props, "pci_bus_id", None) if props is not None else None
    if isinstance(bus, int):
        pci = f"{getattr(props, 'pci_domain_id', 0) or 0:08X}:{bus:02X}:{getattr(props, 'pci_device_id', 0) or 0:02X}.0"
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(pci)
        except errors:
            pass
    entries = _visible_entries(visible)
    if entries is None:
        return nvml.nvmlDeviceGetHandleByIndex(index)
    if index >= len(entries):
        raise LookupError(f"cuda:{index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[index]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    try:
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    except errors:
        pass
    matches = [h for h in (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount()))
               if _text(nvml.nvmlDeviceGetUUID(h)).startswith(entry)]  # CUDA accepts a unique prefix
    if len(matches) != 1:
        raise LookupError(f"CUDA_VISIBLE_DEVICES entry {entry!r} names {len(matches)} GPUs")
    return matches[0]


def _visible_entries(visible: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it (up to its first invalid entry); None: not set."""
    if visible is None:
        return None
    entries = []
    for entry in (e.strip() for e in visible.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _torch_reserved(index: int) -> int:
    import torch

    return torch.cuda.memory_reserved(index) if torch.cuda.is_initialized() else 0


def _torch_empty_cache() -> None:
    import torch

    torch.cuda.empty_cache()


def nvml_memory(device: str, *, nvml=None, props=None, visible: str | None = None) -> NvmlMemory | None:
    """NVML for a CUDA device (`cuda` or `cuda:i`, this process's numbering), or None where there is
    no GPU or no driver."""
    if not device.startswith("cuda"):
        return None
    try:
        index = int(device.split(":")[1]) if ":" in device else 0
        if props is None:
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(index)
        return NvmlMemory(index, nvml=nvml, props=props, visible=visible)
    except Exception as exc:  # pynvml.NVMLError_LibraryNotFound and friends: no usable GPU
        log.warning("NVML unavailable for %s (%s); using the configured byte budget only", device, exc)
        return None
