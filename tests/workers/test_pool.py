"""The in-process pool: single-flight loads, eviction that spares busy models, failures contained."""

import asyncio
import shutil

import pytest

from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelLoadFailed, ModelNotFound, ModelSpec, PoolOverloaded


def specs(zoo_dir, *names):
    return [ModelSpec(n, str(zoo_dir / n)) for n in names]


async def answer(pool, model, max_tokens=2):
    return [c async for c in pool.generate(model, GenerationRequest("t", prompt="hi", max_tokens=max_tokens))]


def test_concurrent_first_requests_load_the_model_once(zoo_dir):
    pool = ModelPool(specs(zoo_dir, "mux-2m"), torch_threads=1)

    async def go():
        return await asyncio.gather(*[answer(pool, "mux-2m") for _ in range(8)])

    results = asyncio.run(go())
    assert all(r[-1].completion_tokens == 2 for r in results)
    assert pool.loads == {"cold": 1, "warm": 0}
    pool.close()


def test_a_busy_model_is_never_evicted_and_the_waiting_load_times_out_cleanly(zoo_dir):
    pool = ModelPool(specs(zoo_dir, "mux-2m", "mux-5m"), max_resident=1, torch_threads=1)

    async def go():
        await answer(pool, "mux-2m")
        pool.load_timeout_s = 1.5  # the first load above may be slow on a busy machine; the wait below must not
        busy = pool.generate("mux-2m", GenerationRequest("t", prompt="x", max_tokens=500, temperature=0))
        await anext(busy)  # mux-2m is resident and busy
        with pytest.raises(PoolOverloaded) as info:
            await answer(pool, "mux-5m")  # needs mux-2m's room, which is in use
        assert info.value.retry_after >= 1
        assert "mux-2m" in pool.stats()["resident"]
        while pool.stats()["loading"]:  # the timed-out load gives up at its own deadline, a moment later
            await asyncio.sleep(0.01)
        await busy.aclose()
        pool.load_timeout_s = 120
        await answer(pool, "mux-5m")  # mux-2m is idle now: evicted for mux-5m
        return pool.stats()

    stats = asyncio.run(go())
    assert stats["resident"] == ["mux-5m"]
    assert pool.evictions == 1
    pool.close()


def test_unknown_model_is_a_typed_error(zoo_dir):
    pool = ModelPool(specs(zoo_dir, "mux-2m"))
    with pytest.raises(ModelNotFound):
        asyncio.run(answer(pool, "nope"))


def test_a_failed_load_is_reported_and_the_pool_keeps_serving(zoo_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(zoo_dir / "mux-2m", broken)
    (broken / "config.json").write_text("{ this is not json")
    pool = ModelPool(specs(zoo_dir, "mux-2m") + [ModelSpec("broken", str(broken))], torch_threads=1)
    with pytest.raises(ModelLoadFailed) as info:
        asyncio.run(answer(pool, "broken"))
    assert "broken" in info.value.message
    assert asyncio.run(answer(pool, "mux-2m"))[-1].completion_tokens == 2
    assert [m.name for m in pool.models()] == ["mux-2m"]  # the broken one is not advertised
    pool.close()


def test_models_are_described_without_loading_them(zoo_dir):
    pool = ModelPool(specs(zoo_dir, "mux-2m", "mux-5m"))
    infos = {m.name: m for m in pool.models()}
    assert infos["mux-2m"].parameters < infos["mux-5m"].parameters
    assert infos["mux-5m"].weight_bytes == infos["mux-5m"].parameters * 4  # float32
    assert pool.loads == {"cold": 0, "warm": 0}
