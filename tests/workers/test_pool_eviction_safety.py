"""Eviction never pulls weights from under a running step, and never stalls the replica's event loop."""

import asyncio
import threading

import pytest

from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelSpec


@pytest.fixture(scope="module")
def pair_zoo(zoo_dir):
    from workers.zoo import build_zoo

    build_zoo(zoo_dir, ["mux-40m", "mux-40m-draft"], progress=False)
    return zoo_dir


def make_pool(zoo_dir, *names, **kw):
    return ModelPool([ModelSpec(n, str(zoo_dir / n)) for n in names], max_resident=1, kv_reserve_tokens=64,
                     torch_threads=1, **kw)


async def answer(pool, model, max_tokens=2):
    req = GenerationRequest("t", prompt="hi", max_tokens=max_tokens, temperature=0)
    return [c async for c in pool.generate(model, req)]


class BlockingStep:
    """Wraps an engine's step so the first one `when` picks blocks until released, and records
    the device its weights were on when that step's forward ran."""

    def __init__(self, engine, when=lambda plan: True):
        self.engine, self.run, self.when = engine, engine._run, when
        self.armed = True
        self.entered, self.release = threading.Event(), threading.Event()
        self.devices = []
        engine._run = self

    def __call__(self, plan):
        if self.armed and self.when(plan):
            self.armed = False
            self.entered.set()
            self.release.wait(30)
            self.devices.append(next(self.engine.model.parameters()).device.type)
        return self.run(plan)


async def leave_mid_step(pool, model, step, req):
    """A client streams `req` and disconnects while the engine is inside the step `step` blocks
    (its task cancelled, as the server does): the pool's in-flight count for `model` drops to 0."""
    async def consume():
        async for _ in pool.generate(model, req):
            pass

    client = asyncio.ensure_future(consume())
    assert await asyncio.to_thread(step.entered.wait, 10)  # the engine is inside a step now
    client.cancel()
    with pytest.raises(asyncio.CancelledError):
        await client
    assert not pool.stats()["in_flight"]


async def host_copy_ready(pool, model):
    """With a host copy, an eviction moves the model's tensors to the meta device (a shell)."""
    for _ in range(1000):
        if pool.host.get(model) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no host copy of {model}")


def test_a_model_abandoned_mid_step_is_evicted_only_after_the_step(zoo_dir):
    pool = make_pool(zoo_dir, "mux-2m", "mux-5m", host_budget_bytes=1 << 30)

    async def go():
        await answer(pool, "mux-2m")
        await host_copy_ready(pool, "mux-2m")
        step = BlockingStep(pool._resident["mux-2m"].engine, when=lambda plan: plan.decode)
        try:
            await leave_mid_step(pool, "mux-2m", step, GenerationRequest("t", prompt="x", max_tokens=40, temperature=0))
            other = asyncio.ensure_future(answer(pool, "mux-5m"))  # needs mux-2m's room
            await asyncio.sleep(0.3)
            assert "mux-2m" in pool.stats()["resident"], "evicted while its engine was running a step"
            assert next(step.engine.model.parameters()).device.type == "cpu"
        finally:
            step.release.set()
        await asyncio.wait_for(other, 60)  # the step ends, the engine drains, the eviction goes ahead
        return step

    step = asyncio.run(go())
    assert step.devices == ["cpu"]  # the step's forward ran on real weights
    assert pool.stats()["resident"] == ["mux-5m"] and pool.evictions == 1
    assert not step.engine._thread.is_alive()
    pool.close()


def test_a_draft_lent_to_a_running_step_is_not_evicted(pair_zoo):
    """A speculative stream's draft weights are used inside the target's step: the draft's own
    engine is idle, but it may not go while the model it was lent to is mid-step."""
    pool = ModelPool([ModelSpec(n, str(pair_zoo / n)) for n in ("mux-40m", "mux-40m-draft", "mux-2m")],
                     max_resident=2, kv_reserve_tokens=64, torch_threads=1, host_budget_bytes=1 << 30)

    async def go():
        await answer(pool, "mux-40m-draft")
        await answer(pool, "mux-40m")
        await host_copy_ready(pool, "mux-40m-draft")
        step = BlockingStep(pool._resident["mux-40m"].engine, when=lambda plan: plan.speculate)
        req = GenerationRequest("t", prompt="x", max_tokens=40, temperature=0, draft_model="mux-40m-draft",
                                draft_tokens=3)
        pool.policy.touch("mux-40m", 1, 10**6)  # make the draft the one the policy would evict
        try:
            await leave_mid_step(pool, "mux-40m", step, req)
            other = asyncio.ensure_future(answer(pool, "mux-2m"))  # needs one of the two slots
            await asyncio.sleep(0.3)
            assert set(pool.stats()["resident"]) == {"mux-40m", "mux-40m-draft"}
        finally:
            step.release.set()
        await asyncio.wait_for(other, 60)
        return step

    step = asyncio.run(go())
    assert step.devices == ["cpu"]
    assert pool.evictions == 1 and "mux-2m" in pool.stats()["resident"]
    pool.close()


class ClosesWhileTheLoopRuns:
    """Replaces an engine's close with one that, before closing, waits until the event loop has
    run a callback: on the loop's own thread that wait could never end (it gives up after 10 s)."""

    def __init__(self, engine, loop):
        self.engine, self.close, self.loop = engine, engine.close, loop
        self.loop_ran_meanwhile = None
        engine.close = self

    def __call__(self):
        ran = threading.Event()
        self.loop.call_soon_threadsafe(ran.set)
        self.loop_ran_meanwhile = ran.wait(10)
        self.close()


def test_closing_an_evicted_engine_never_blocks_the_event_loop(zoo_dir):
    """Engine.close joins the scheduler thread (up to 5 s) and the weights move off the device:
    that work runs in a thread, while the replica's other streams keep flowing."""
    pool = make_pool(zoo_dir, "mux-2m", "mux-5m")

    async def go():
        await answer(pool, "mux-2m")
        closing = ClosesWhileTheLoopRuns(pool._resident["mux-2m"].engine, asyncio.get_running_loop())
        await answer(pool, "mux-5m")  # evicts mux-2m
        return closing

    closing = asyncio.run(go())
    assert pool.evictions == 1 and pool.stats()["resident"] == ["mux-5m"]
    assert closing.loop_ran_meanwhile, "the event loop was blocked while the evicted engine closed"
    assert not closing.engine._thread.is_alive()  # closed before the next load took its room
    pool.close()


def test_an_evicted_engine_leaves_nothing_behind(zoo_dir):
    """Its KV and weights are freed by the eviction itself (no garbage collection needed, which
    would hold the interpreter lock for a long pause): a GPU gets the memory back at once."""
    import gc
    import weakref

    pool = make_pool(zoo_dir, "mux-2m", "mux-5m")

    async def go():
        await answer(pool, "mux-2m")
        engine = pool._resident["mux-2m"].engine
        refs = weakref.ref(engine), weakref.ref(engine.model), weakref.ref(engine._batch)
        del engine
        gc.disable()
        try:
            await answer(pool, "mux-5m")  # evicts mux-2m
            return [r() is None for r in refs]
        finally:
            gc.enable()

    assert asyncio.run(go()) == [True, True, True]
    pool.close()


def test_the_in_process_backend_closes_its_pool_off_the_event_loop(zoo_dir):
    from gateway.upstreams.backends import InProcessBackend

    backend = InProcessBackend([ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))], kv_reserve_tokens=64, torch_threads=1)

    async def go():
        await answer(backend.pool, "mux-2m")
        closing = ClosesWhileTheLoopRuns(backend.pool._resident["mux-2m"].engine, asyncio.get_running_loop())
        await backend.close()
        return closing

    closing = asyncio.run(go())
    assert closing.loop_ran_meanwhile, "the event loop was blocked while the pool closed"
    assert not closing.engine._thread.is_alive()
