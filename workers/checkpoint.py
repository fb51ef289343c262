"""Facts about a Hugging Face checkpoint directory, read without loading it (no torch)."""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from workers.types import ModelInfo, ModelLoadFailed, ModelSpec

log = logging.getLogger(__name__)


def safetensors_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def read_header(file: Path) -> dict:
    """A safetensors header: 8-byte little-endian length, then JSON (name -> dtype, shape, offsets)."""
    with file.open("rb") as fh:
        return read_header_from(fh)[0]


def read_header_from(fh) -> tuple[dict, int]:
    """The header of a safetensors file open at its start, and the offset where its tensor data
    begins (the header's `data_offsets` count from there)."""
    (n,) = struct.unpack("<Q", fh.read(8))
    return json.loads(fh.read(n)), 8 + n


def tensor_shapes(path: str | Path) -> dict[str, list[int]]:
    """Every tensor's shape across a checkpoint directory's safetensors files (or, for a prepared
    GGUF directory, its tensor table)."""
    from workers import gguf

    if gguf.is_gguf_dir(path):
        return gguf.hf_shapes(gguf.read_table(path))
    shapes = {}
    for f in safetensors_files(Path(path)):
        shapes.update({k: v["shape"] for k, v in read_header(f).items() if k != "__metadata__"})
    return shapes


def _tensor_sizes(file: Path) -> tuple[int, int]:
    """(parameter count, bytes) of one safetensors file."""
    header = read_header(file)
    params = nbytes = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        params += _count(meta["shape"])
        start, end = meta["data_offsets"]
        nbytes += end - start
    return params, nbytes


def read_model_info(name: str, path: str | Path) -> ModelInfo:
    """Name, context length, parameter count and weight bytes of a checkpoint directory."""
    from workers import gguf

    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
        if gguf.is_gguf_dir(path):  # parameters as the model holds them; bytes as the file packs them
            table = gguf.read_table(path)
            params = sum(_count(shape) for shape in gguf.hf_shapes(table).values())
            nbytes = gguf.packed_bytes(table)
            return _info(name, config, params, nbytes)
        files = safetensors_files(path)
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        params = nbytes = 0
        for f in files:
            p, b = _tensor_sizes(f)
            params, nbytes = params + p, nbytes + b
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ModelLoadFailed(f"model {name!r}: cannot read checkpoint at {path}: {exc}") from exc
    return _info(name, config, params, nbytes)


def servable_models(specs: Iterable[ModelSpec], kv_reserve_tokens: int, cache: dict[str, ModelInfo]) -> list[ModelInfo]:
    """Every model of `specs` whose checkpoint can be read, with the context length the engine
    enforces: the checkpoint's, capped by the KV reserve a model's running batch may hold
    (`kv_reserve_tokens`). `cache` keeps what was read, so each checkpoint is read once; one that
    cannot be read is logged and left out."""
    out = []
    for spec in specs:
        if spec.name not in cache:
            try:
                cache[spec.name] = read_model_info(spec.name, spec.path)
            except ModelLoadFailed as exc:
                log.warning("%s", exc)
                continue
        info = cache[spec.name]
        out.append(replace(info, context_length=min(info.context_length, kv_reserve_tokens)))
    return out


def _count(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _info(name: str, config: dict, params: int, nbytes: int) -> ModelInfo:
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
    return ModelInfo(name=name, context_length=context, parameters=params, weight_bytes=nbytes)
