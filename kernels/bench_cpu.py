"""CPU side-by-side: greedy-generation tokens/s and resident weight bytes, float vs int8 (torch path).

    .venv/bin/python -m kernels.bench_cpu --model var/test-zoo/mux-5m --dtype float32

Both models are measured in the same run, alternating rounds, after a warm-up; prints one JSON line
with the ratio int8/float. On CPU the int8 layers cast their codes to the activation dtype on
every call, so expect int8 to be slower here: the win is bytes (and, on GPU, the Triton kernel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _tokens_per_second(model, prompt: torch.Tensor, new_tokens: int) -> float:
    started = time.perf_counter()
    out = model.generate(
        prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )
    elapsed = time.perf_counter() - started
    return (out.shape[1] - prompt.shape[1]) * prompt.shape[0] / elapsed


def main() -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from kernels.quant_linear import quantize_model, quantized_module_names, resident_weight_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="var/test-zoo/mux-5m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    float_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    int8_model = quantize_model(AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval())
    quantized = quantized_module_names(int8_model)
    prompt = torch.randint(3, float_model.config.vocab_size, (1, args.prompt_tokens))

    rates: dict[str, list[float]] = {"float": [], "int8": []}
    with torch.inference_mode():
        for model in (float_model, int8_model):  # warm-up
            _tokens_per_second(model, prompt, 8)
        for _ in range(args.rounds):
            rates["float"].append(_tokens_per_second(float_model, prompt, args.new_tokens))
            rates["int8"].append(_tokens_per_second(int8_model, prompt, args.new_tokens))
    tps = {k: statistics.median(v) for k, v in rates.items()}
    summary = {
        "model": args.model,
        "dtype": args.dtype,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "tokens_per_s_float": round(tps["float"], 1),
        "tokens_per_s_int8": round(tps["int8"], 1),
        "tokens_per_s_ratio_int8_over_float": round(tps["int8"] / tps["float"], 3),
        "weight_bytes_float": resident_weight_bytes(float_model),
        "weight_bytes_int8": resident_weight_bytes(int8_model),
        "quantized_layers_bytes_float": resident_weight_bytes(float_model, quantized),
        "quantized_layers_bytes_int8": resident_weight_bytes(int8_model, quantized),
    }
    summary["quantized_layers_bytes_ratio"] = round(
        summary["quantized_layers_bytes_int8"] / summary["quantized_layers_bytes_float"], 4
    )
    summary["weight_bytes_ratio"] = round(summary["weight_bytes_int8"] / summary["weight_bytes_float"], 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
