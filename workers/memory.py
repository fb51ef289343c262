"""Device memory: what a replica may use, and what the device really has free.

`DeviceMemory` is the seam: NVML (pynvml) on GPUs, a byte budget accounted exactly elsewhere.
The pool keeps its own exact ledger of what it reserved (`ByteLedger`) and, on a GPU, also
checks the device's real free memory, which other processes share.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class DeviceMemory(Protocol):
    def total(self) -> int: ...

    def used(self) -> int: ...

    def free(self) -> int: ...


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
    """A GPU's memory as NVML reports it: all processes' usage, not just ours."""

    def __init__(self, index: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self._handle)

    def _info(self):
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle)

    def total(self) -> int:
        return int(self._info().total)

    def used(self) -> int:
        return int(self._info().used)

    def free(self) -> int:
        return int(self._info().free)


def nvml_memory(device: str) -> NvmlMemory | None:
    """NVML for a CUDA device, or None where there is no GPU or no driver."""
    if not device.startswith("cuda"):
        return None
    try:
        index = int(device.split(":")[1]) if ":" in device else 0
        return NvmlMemory(index)
    except Exception as exc:  # pynvml.NVMLError_LibraryNotFound and friends: no usable GPU
        log.warning("NVML unavailable for %s (%s); using the configured byte budget only", device, exc)
        return None
