"""Reading a checkpoint's safetensors files for a cold load: every byte, eagerly, in one pass.

Each file is mapped copy-on-write (writes never reach the file) and its tensors are views of the
mapping, as safetensors' own loader makes them. The difference from a lazy load is the reader:
one thread asks the kernel to populate each mapping front to back (MADV_POPULATE_READ: large
sequential reads through readahead, no page fault per 4 KiB later), while the caller builds the
model from the views. A view touched before the reader reaches it just faults its pages in, so
the tensors are always valid; when `populate` returns, every weight byte has been read from disk.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import threading
from pathlib import Path

import torch

from workers.checkpoint import read_header_from

MADV_POPULATE_READ = 22  # linux >= 5.14; older kernels get EINVAL and a plain read instead
_CHUNK = 64 << 20
_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files transformers would load from a directory: the index's shards, or
    model.safetensors. Empty when there are none (a .bin checkpoint, say)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    return [single] if single.exists() else []


class MappedCheckpoint:
    """One safetensors file mapped copy-on-write, its tensors as views of the mapping."""

    def __init__(self, file: Path):
        self.file = file
        with file.open("rb") as fh:
            self.header, self.data_start = read_header_from(fh)
            self.size = os.fstat(fh.fileno()).st_size
            self._map = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)  # keeps the mapping alive
        self.address = self._bytes.data_ptr()

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, meta in self.header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES[meta["dtype"]]
            start, end = (self.data_start + o for o in meta["data_offsets"])
            raw = self._bytes[start:end]
            if start % dtype.itemsize:  # the format does not promise alignment: copy the odd one
                raw = raw.clone()
            out[name] = raw.view(dtype).view(meta["shape"])
        return out

    def populate(self) -> None:
        """Read the whole file into the mapping, front to back (releases the GIL)."""
        for offset in range(0, self.size, _CHUNK):
            length = min(_CHUNK, self.size - offset)
            if _libc.madvise(self.address + offset, length, MADV_POPULATE_READ) != 0:
                self._read_through(offset)
                return

    def _read_through(self, offset: int) -> None:
        """Kernels without MADV_POPULATE_READ: sequential reads fill the page cache, so the
        mapping's pages are then minor faults (no disk wait) when first touched."""
        scratch = bytearray(_CHUNK)
        with self.file.open("rb", buffering=0) as fh:
            fh.seek(offset)
            while fh.readinto(scratch):
                pass


class EagerReader:
    """Maps every file of a checkpoint and reads them all in a background thread."""

    def __init__(self, files: list[Path]):
        self.files = [MappedCheckpoint(f) for f in files]
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cold-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for f in self.files:
                f.populate()
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def state_dict(self) -> dict[str, torch.Tensor]:
        merged = {}
        for f in self.files:
            merged.update(f.tensors())
        return merged

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error
