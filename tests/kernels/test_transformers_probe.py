"""transformers probes for Hugging Face's `kernels` package by importing the top-level `kernels`:
ours must stay import-light, version-less, and must not make transformers think HF kernels exist."""

from __future__ import annotations

import subprocess
import sys

from support import REPO

PROBE = """
import sys
import kernels
assert kernels.__file__.startswith({repo!r}), kernels.__file__  # ours is the one found
assert not hasattr(kernels, "__version__")
assert "torch" not in sys.modules and "triton" not in sys.modules, "import kernels must stay light"
from transformers import AutoModelForCausalLM
from transformers.utils.import_utils import is_kernels_available
from transformers.utils import logging
logging.disable_progress_bar()
assert not is_kernels_available()
model = AutoModelForCausalLM.from_pretrained({model!r})
from kernels import quantize_model  # lazy export still works after transformers' probe
quantize_model(model)
print("ok")
"""


def test_transformers_loads_models_with_our_kernels_package_importable(zoo_dir):
    code = PROBE.format(repo=str(REPO), model=str(zoo_dir / "mux-2m"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_package_attributes_resolve_lazily():
    import kernels

    assert not hasattr(kernels, "__version__")
    assert callable(kernels.quantize_model) and callable(kernels.int8_weight_linear)
    assert set(kernels.__all__) >= {"quantize_model", "save_quantized", "load_quantized", "QuantLinear"}
