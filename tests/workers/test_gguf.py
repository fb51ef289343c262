"""A GGUF checkpoint in the pool: its one-time conversion, the bytes it holds, its answers."""

import asyncio
import os

import pytest
import torch

from real_model import GGUF_CACHE, smollm2_dir, smollm2_file
from workers import gguf
from workers.checkpoint import read_model_info
from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelSpec
from workers.weights import copy_to_host, load_cold, load_tokenizer, load_warm, tensor_bytes

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol() -> str:
    return smollm2_dir()


async def answer(pool, model, messages=QUESTION, max_tokens=12):
    req = GenerationRequest("t", messages=messages, max_tokens=max_tokens, temperature=0)
    return "".join([c.text async for c in pool.generate(model, req)])


def test_conversion_is_cached_by_the_files_hash(smol):
    table = os.path.join(smol, gguf.TABLE)
    before = os.stat(table).st_mtime_ns
    assert str(gguf.prepare(smollm2_file(), GGUF_CACHE)) == smol  # no second conversion
    assert os.stat(table).st_mtime_ns == before
    assert gguf.file_digest(smollm2_file())[:16] in os.path.basename(smol)


def test_tokenizer_and_chat_template_come_from_the_file(smol):
    tok = load_tokenizer(smol)
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *QUESTION], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                    "<|im_end|>\n<|im_start|>assistant\n")


def test_the_ledger_counts_the_dequantized_bytes_the_model_holds(smol):
    info = read_model_info("smol", smol)
    assert info.parameters == 134_515_008  # SmolLM2-135M, embedding tied to the head
    assert info.weight_bytes < info.parameters  # packed Q4_1/Q8_0 on disk: under a byte per weight
    pool = ModelPool([ModelSpec("smol", smol, dtype="bfloat16")], kv_reserve_tokens=256, prefix_cache_bytes=0,
                     torch_threads=1)
    footprint = pool.footprint("smol")
    assert "Paris" in asyncio.run(answer(pool, "smol"))
    resident = pool._resident["smol"]
    assert resident.measured_weight_bytes == footprint.weight_bytes == tensor_bytes(resident.engine.model)
    assert footprint.weight_bytes > 2 * info.parameters  # bf16: transformers dequantizes, so do we
    assert pool.ledger.holders() == {"smol": footprint.total}
    pool.close()


def test_evicted_to_host_and_reloaded_warm_gives_the_same_answer(smol, zoo_dir):
    names = {"smol": smol, "mux-5m": str(zoo_dir / "mux-5m")}
    options = dict(kv_reserve_tokens=256, prefix_cache_bytes=0, torch_threads=1)
    probe = ModelPool([ModelSpec(n, p) for n, p in names.items()], **options)
    budget = probe.footprint("smol").total + probe.footprint("mux-5m").total - 1  # one at a time
    pool = ModelPool([ModelSpec(n, p) for n, p in names.items()], device_budget_bytes=budget,
                     host_budget_bytes=1 << 30, **options)

    async def go():
        first = await answer(pool, "smol")
        while "smol" not in pool.host.names() or pool.host.get("smol") is None:  # the background host copy
            await asyncio.sleep(0.05)
        await answer(pool, "mux-5m")  # evicts smol to its host copy
        assert "smol" not in pool.stats()["resident"]
        return first, await answer(pool, "smol")

    first, again = asyncio.run(go())
    assert "Paris" in first and again == first
    assert pool.loads == {"cold": 2, "warm": 1}
    pool.close()


def test_greedy_engine_output_equals_model_generate(smol):
    """In float32, where batched and single-row kernels round alike; several prompts in one batch."""
    prompts = ["What is the capital of France?", "What is 10 times 3?", "What is the capital of Japan?"]
    pool = ModelPool([ModelSpec("smol", smol, dtype="float32")], kv_reserve_tokens=512, torch_threads=1)

    async def go():
        return await asyncio.gather(*[answer(pool, "smol", [{"role": "user", "content": p}], 16) for p in prompts])

    answers = asyncio.run(go())
    model, tok = load_cold(smol, torch.float32, "cpu"), load_tokenizer(smol)
    for prompt, got in zip(prompts, answers):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
        assert got == tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    pool.close()


@pytest.mark.parametrize("quantization, bytes_ratio", [("int8", 0.62), ("int8_head", 0.51)])
def test_int8_weights_answer_right_and_the_ledger_counts_the_packed_bytes(smol, quantization, bytes_ratio):
    """`quantization: int8` on a GGUF model: the linear layers hold int8 codes (the tied embedding
    stays bf16); `int8_head`: the tied head and embedding too, one set of codes. The greedy answer
    is still right, the ledger holds what the model holds, and a warm reload (its host copy into a
    skeleton built afresh) answers the same."""
    options = dict(kv_reserve_tokens=256, prefix_cache_bytes=0, torch_threads=1)
    dense = ModelPool([ModelSpec("smol", smol, dtype="bfloat16")], **options)
    pool = ModelPool([ModelSpec("smol", smol, dtype="bfloat16", quantization=quantization)], **options)
    footprint = pool.footprint("smol")
    assert footprint.weight_bytes < bytes_ratio * dense.footprint("smol").weight_bytes
    first = asyncio.run(answer(pool, "smol"))
    assert "Paris" in first
    assert "30" in asyncio.run(answer(pool, "smol", [{"role": "user", "content": "What is 10 times 3?"}]))
    model = pool._resident["smol"].engine.model
    assert model.model.layers[0].mlp.down_proj.qweight.dtype == torch.int8
    assert hasattr(model.lm_head, "qweight") == (quantization == "int8_head")
    assert pool._resident["smol"].measured_weight_bytes == footprint.weight_bytes == tensor_bytes(model)
    assert pool.ledger.holders() == {"smol": footprint.total}
    host = copy_to_host(model, pin=False)
    warm = load_warm(smol, torch.bfloat16, "cpu", host, quantization)
    tok = load_tokenizer(smol)
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = warm.generate(**ids, max_new_tokens=12, do_sample=False)
    assert tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True) == first
    pool.close()
    dense.close()
