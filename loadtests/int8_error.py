"""Where int8 logit error comes from: per model, the whole swap against bf16 weights, and each kind
of projection quantized alone.

    .venv/bin/python -m loadtests.int8_error --zoo var/zoo --models mux-2m mux-5m mux-20m mux-50m

Relative error = ||logits_q - logits_f|| / ||logits_f|| on four fixed prompts (the same measure
as tests/kernels/test_quantized_zoo_models.py), computed in float32. `bf16_weights` rounds every
weight to bfloat16 and computes in float32: the error of the format most models are served in,
for scale. `only_<proj>`: just that projection of every layer in int8, the rest float; which
projections dominate says which to keep in float if a model is too sensitive (`skip` in
kernels.quant_linear.quantize_model). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kernels.quant_linear import DEFAULT_SKIP, quantize_model

PROMPTS = [
    "The quick brown fox jumps over the lazy dog because",
    "Once upon a time, in a small village by the sea,",
    "To compute the sum of two numbers, first",
    "The capital of France is a city that",
]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a - b).norm() / b.norm()), 5)


def report(path: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    tok = AutoTokenizer.from_pretrained(path)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    length = min(len(i) for i in ids)
    batch = torch.tensor([i[:length] for i in ids])
    with torch.inference_mode():
        reference = load()(input_ids=batch).logits
        out = {"layers": load().config.num_hidden_layers,
               "int8": relative_error(quantize_model(load())(input_ids=batch).logits, reference)}
        rounded = load()
        for param in rounded.parameters():
            param.copy_(param.to(torch.bfloat16).to(torch.float32))
        out["bf16_weights"] = relative_error(rounded(input_ids=batch).logits, reference)
        for proj in PROJECTIONS:
            skip = (*DEFAULT_SKIP, *(p for p in PROJECTIONS if p != proj))
            out[f"only_{proj}"] = relative_error(quantize_model(load(), skip)(input_ids=batch).logits, reference)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zoo", default="var/zoo")
    parser.add_argument("--models", nargs="+", default=["mux-2m", "mux-5m", "mux-20m", "mux-50m"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from workers.zoo import build_zoo

    build_zoo(Path(args.zoo), args.models, progress=False)
    print(json.dumps({"bench": "int8_error", "models": {m: report(Path(args.zoo) / m) for m in args.models}}))


if __name__ == "__main__":
    main()
