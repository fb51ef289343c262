"""Byte accounting: predicted footprints, a budget never exceeded, eviction order, the warm tier."""

import asyncio
import random

import pytest

from workers.eviction import GDSFPolicy, LRUPolicy
from workers.footprint import predict_footprint
from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelLoadFailed, ModelSpec

MODELS = ["mux-2m", "mux-5m"]


def specs(zoo_dir, *names):
    return [ModelSpec(n, str(zoo_dir / n)) for n in names]


async def answer(pool, model, max_tokens=2, **kw):
    req = GenerationRequest("t", prompt="hello there", max_tokens=max_tokens, temperature=0, **kw)
    return [c async for c in pool.generate(model, req)]


def test_predicted_footprint_is_within_5_percent_of_measured(zoo_dir):
    import torch
    from transformers import DynamicCache

    from workers.batching import cache_argument
    from workers.weights import load_cold, tensor_bytes

    for name in MODELS:
        fp = predict_footprint(name, zoo_dir / name, "float32", kv_reserve_tokens=256)
        model = load_cold(str(zoo_dir / name), torch.float32, "cpu")
        measured = tensor_bytes(model)
        assert abs(fp.weight_bytes - measured) / measured <= 0.05, (name, fp.weight_bytes, measured)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 100, dtype=torch.long), use_cache=True, **{cache_argument(model): cache})
        kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        assert abs(fp.kv_bytes_per_token * 100 - kv) / kv <= 0.05, (name, fp.kv_bytes_per_token * 100, kv)


def test_budget_is_never_exceeded_under_concurrent_loads(zoo_dir):
    names = ["mux-2m", "mux-5m", "mux-2m-b", "mux-5m-b"]
    from workers.zoo import build_zoo

    build_zoo(zoo_dir, names, progress=False)
    probe = ModelPool(specs(zoo_dir, *names), kv_reserve_tokens=64)
    sizes = {n: probe.footprint(n).total for n in names}
    budget = sizes["mux-5m"] + sizes["mux-2m"] + 1024  # two models at most, never all four
    pool = ModelPool(specs(zoo_dir, *names), device_budget_bytes=budget, kv_reserve_tokens=64, torch_threads=1)
    peaks = []

    async def one(model):
        async for _ in pool.generate(model, GenerationRequest("t", prompt="hi", max_tokens=3, temperature=0)):
            peaks.append(pool.ledger.used())
            assert sum(pool.stats()["resident_bytes"].values()) <= budget

    async def go():
        rng = random.Random(3)
        await asyncio.gather(*[one(rng.choice(names)) for _ in range(40)])

    asyncio.run(go())
    assert max(peaks) <= budget
    assert pool.evictions > 0  # the budget really forced swapping
    assert pool.stats()["load_failures"] == 0
    pool.close()


def test_a_model_larger_than_the_budget_fails_with_the_reason(zoo_dir):
    pool = ModelPool(specs(zoo_dir, "mux-5m"), device_budget_bytes=1_000_000)
    with pytest.raises(ModelLoadFailed, match="device budget"):
        asyncio.run(answer(pool, "mux-5m"))


def test_evicted_model_comes_back_warm_from_host_with_identical_output(zoo_dir):
    probe = ModelPool(specs(zoo_dir, *MODELS), kv_reserve_tokens=64)
    budget = max(probe.footprint(n).total for n in MODELS) + 1024  # one model at a time
    pool = ModelPool(specs(zoo_dir, *MODELS), device_budget_bytes=budget, host_budget_bytes=10**9,
                     kv_reserve_tokens=64, torch_threads=1)

    async def go():
        first = "".join(c.text for c in await answer(pool, "mux-2m", max_tokens=8))
        for _ in range(200):  # the host copy is made in the background after the cold load
            if "mux-2m" in pool.stats()["host_models"] and pool.host.get("mux-2m"):
                break
            await asyncio.sleep(0.02)
        await answer(pool, "mux-5m")  # evicts mux-2m to host
        again = "".join(c.text for c in await answer(pool, "mux-2m", max_tokens=8))
        return first, again

    first, again = asyncio.run(go())
    assert first == again
    assert pool.loads["warm"] == 1 and pool.loads["cold"] == 2
    pool.close()


def test_without_host_budget_evicted_models_go_cold(zoo_dir):
    probe = ModelPool(specs(zoo_dir, *MODELS), kv_reserve_tokens=64)
    budget = max(probe.footprint(n).total for n in MODELS) + 1024
    pool = ModelPool(specs(zoo_dir, *MODELS), device_budget_bytes=budget, host_budget_bytes=0, kv_reserve_tokens=64)

    async def go():
        for m in ["mux-2m", "mux-5m", "mux-2m"]:
            await answer(pool, m)

    asyncio.run(go())
    assert pool.loads == {"cold": 3, "warm": 0}
    pool.close()


def test_lru_evicts_least_recently_used():
    lru = LRUPolicy()
    for m in ["a", "b", "c", "a"]:
        lru.touch(m, 100, 1.0)
    assert lru.victim(["a", "b", "c"]) == "b"


def test_gdsf_keeps_popular_and_expensive_models_over_recent_ones():
    gdsf, lru = GDSFPolicy(), LRUPolicy()
    for policy in (gdsf, lru):
        for _ in range(10):
            policy.touch("popular", 100, 1.0)
        policy.touch("once", 100, 1.0)
    assert gdsf.victim(["popular", "once"]) == "once"
    assert lru.victim(["popular", "once"]) == "popular"  # LRU only sees recency
    big = GDSFPolicy()
    big.touch("huge-cheap", 10_000, 0.1)
    big.touch("small-costly", 100, 1.0)
    assert big.victim(["huge-cheap", "small-costly"]) == "huge-cheap"


def test_gdsf_ages_out_models_that_stopped_being_used():
    gdsf = GDSFPolicy()
    for _ in range(3):
        gdsf.touch("old", 100, 1.0)
    gdsf.touch("new", 100, 1.0)
    gdsf.victim(["new"])  # an eviction raises the clock...
    for _ in range(3):  # ...so a model used as often as the stale one, but later, outranks it
        gdsf.touch("newer", 100, 1.0)
    assert gdsf.victim(["old", "newer"]) == "old"


def test_int8_models_are_accounted_swapped_and_served_in_fewer_bytes(zoo_dir):
    names = ["mux-2m", "mux-5m"]
    float_pool = ModelPool([ModelSpec(n, str(zoo_dir / n), dtype="float32") for n in names], kv_reserve_tokens=64)
    q_specs = [ModelSpec(n, str(zoo_dir / n), dtype="float32", quantization="int8") for n in names]
    probe = ModelPool(q_specs, kv_reserve_tokens=64)
    for n in names:  # linear layers are a quarter of float32; embeddings and the head stay float
        assert probe.footprint(n).weight_bytes < 0.75 * float_pool.footprint(n).weight_bytes
    budget = max(probe.footprint(n).total for n in names) + 1024
    pool = ModelPool(q_specs, device_budget_bytes=budget, host_budget_bytes=10**9, kv_reserve_tokens=64,
                     torch_threads=1)

    async def go():
        first = "".join(c.text for c in await answer(pool, "mux-2m", max_tokens=6))
        for _ in range(200):
            if pool.host.get("mux-2m"):
                break
            await asyncio.sleep(0.02)
        await answer(pool, "mux-5m")
        again = "".join(c.text for c in await answer(pool, "mux-2m", max_tokens=6))
        return first, again

    first, again = asyncio.run(go())
    assert first == again and first
    assert pool.loads["warm"] == 1
    for name, measured in pool.stats()["measured_weight_bytes"].items():
        predicted = pool.footprint(name).weight_bytes
        assert abs(predicted - measured) / measured <= 0.05, (name, predicted, measured)
    pool.close()
