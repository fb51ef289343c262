"""GGUF checkpoints (llama.cpp's single-file format) in the pool.

transformers can load a GGUF file (`from_pretrained(dir, gguf_file=...)`), but every load parses
the file's metadata twice with gguf-py's pure-Python reader (the 49k-token vocabulary and its
merges: ~10 s for SmolLM2-135M) and converts the tokenizer again (~9 s). So the one-time work is
done once per file and cached in a directory keyed by the file's SHA-256 (`prepare`):
config.json, generation_config.json, the converted tokenizer (chat template included) and
gguf.json, a table of where each tensor's packed bytes are in the file and which HF name it
becomes. That directory is then an ordinary checkpoint directory for the pool (`is_gguf_dir`):
the tokenizer loads in well under a second, and a cold load (`load_state_dict`) maps the file,
dequantizes each tensor straight into the load dtype (gguf-py's numpy kernels; the Llama q/k
permutation undone by transformers' own tensor processor) and builds the model as a safetensors
load would. Like transformers, the model holds dequantized weights: the packed bytes are the
disk tier, the device and the host copy hold load-dtype tensors, and the ledger counts those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

TABLE = "gguf.json"
_FORMAT = 1  # bump when the table's shape changes: older cache directories are rebuilt
_hashes: dict[tuple, str] = {}
_prepare_lock = threading.Lock()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) for this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def is_gguf_dir(path: str | Path) -> bool:
    return (Path(path) / TABLE).is_file()


def read_table(path: str | Path) -> dict:
    return json.loads((Path(path) / TABLE).read_text())


def prepared_dir(gguf_file: str | Path, cache_root: str | Path) -> Path:
    return Path(cache_root) / f"{Path(gguf_file).stem}-{file_digest(gguf_file)[:16]}"


def prepare(gguf_file: str | Path, cache_root: str | Path) -> Path:
    """The cache directory for a GGUF file, converting it first if it is not there yet (once per
    file: ~15-20 s for SmolLM2-135M on one core). Written to a temporary directory and renamed,
    so a crash never leaves a half-converted directory that looks complete."""
    gguf_file = Path(gguf_file).resolve()
    out = prepared_dir(gguf_file, cache_root)
    with _prepare_lock:
        if is_gguf_dir(out) and read_table(out).get("format") == _FORMAT and read_table(out)["file"] == str(gguf_file):
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("converting %s (config, tokenizer, tensor table) into %s; once per file", gguf_file.name, out)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            _convert(gguf_file, tmp)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf_file: Path, out: Path) -> None:
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    folder, name = str(gguf_file.parent), gguf_file.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    reader = GGUFReader(str(gguf_file))
    architecture = str(reader.fields["general.architecture"].contents())
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    names = get_gguf_hf_weights_map(skeleton, processor)
    tensors = [{"name": t.name, "type": int(t.tensor_type), "offset": int(t.data_offset), "nbytes": int(t.n_bytes),
                "data_shape": [int(d) for d in t.data.shape], "data_dtype": t.data.dtype.str,
                "shape": [int(d) for d in reversed(t.shape)]}  # GGUF lists dims innermost first
               for t in reader.tensors]
    table = {"format": _FORMAT, "file": str(gguf_file), "sha256": file_digest(gguf_file),
             "architecture": architecture, "hf_names": names, "tensors": tensors}
    (out / TABLE).write_text(json.dumps(table, indent=1))


def hf_shapes(table: dict) -> dict[str, list[int]]:
    """The HF tensors a GGUF file gives (its unmapped extras, e.g. rope_freqs, left out)."""
    return {table["hf_names"][t["name"]]: t["shape"] for t in table["tensors"] if t["name"] in table["hf_names"]}


def packed_bytes(table: dict) -> int:
    return sum(t["nbytes"] for t in table["tensors"])


def load_state_dict(path: str | Path, dtype, config) -> dict:
    """Every HF tensor of a prepared GGUF checkpoint, dequantized from the mapped file into
    `dtype`, one tensor at a time (peak extra memory: one tensor in float32)."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    table = read_table(path)
    names = table["hf_names"]
    processor = TENSOR_PROCESSORS.get(table["architecture"], TensorProcessor)(config=config.to_dict())
    parsed = {"tensors": {}, "config": config.to_dict()}
    data = np.memmap(table["file"], dtype=np.uint8, mode="r")
    for t in table["tensors"]:
        raw = data[t["offset"]:t["offset"] + t["nbytes"]].view(np.dtype(t["data_dtype"])).reshape(t["data_shape"])
        weights = dequantize(raw, GGMLQuantizationType(t["type"]))
        result = processor.process(weights=weights, name=t["name"], tensor_key_mapping=names, parsed_parameters=parsed)
        if result.name in names:
            w = result.weights
            if isinstance(w, np.memmap) or not w.flags.writeable or not w.flags.c_contiguous:
                w = np.array(w, order="C")  # an F32 tensor comes back as a view of the read-only mapping
            parsed["tensors"][names[result.name]] = torch.from_numpy(w).to(dtype)
    return parsed["tensors"]
