"""The demo zoo is built offline, deterministically, as ordinary Hugging Face checkpoints."""

import hashlib
import importlib
import sys

from workers.zoo import ZOO, build_zoo


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zoo_covers_small_to_large_sizes():
    sizes = sorted(m.parameter_count() for m in ZOO)
    assert len(ZOO) >= 12
    assert sizes[0] < 3e6 and sizes[-1] > 100e6
    assert len({m.name for m in ZOO}) == len(ZOO)


def test_build_is_deterministic_and_complete(zoo_dir, tmp_path):
    (again,) = build_zoo(tmp_path, ["mux-2m"], progress=False)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha(again / name) == sha(zoo_dir / "mux-2m" / name)
    assert (again / "chat_template.jinja").exists() or "chat_template" in (again / "tokenizer_config.json").read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_zoo_checkpoints_load_through_auto_classes_with_our_kernels_package_on_the_path(zoo_dir):
    import kernels  # our package shadows Hugging Face's `kernels`; transformers must still load models

    assert not hasattr(kernels, "__version__")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(zoo_dir / "mux-2m")
    tok = AutoTokenizer.from_pretrained(zoo_dir / "mux-2m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == next(m for m in ZOO if m.name == "mux-2m").parameter_count()
    text = "naïve café — 你好 🙂"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE: any text round-trips
    assert sys.modules["kernels"] is importlib.import_module("kernels")
