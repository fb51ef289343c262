"""RayServeBackend lists the models from the checkpoints the gateway has, so a pool scaled to zero
is neither waited for nor woken by /v1/models or /readyz; without them it asks the pool. No Ray:
a fake handle counts the calls that would reach a replica."""

import asyncio

from gateway.upstreams.backends import RayServeBackend
from workers.types import ModelInfo, ModelSpec


class FakeHandle:
    def __init__(self):
        self.calls = 0
        handle = self

        class Models:
            async def remote(self):
                handle.calls += 1
                return [ModelInfo("from-pool", 1, 1, 1)]

        self.models = Models()

    def options(self, **_):
        return self


def test_models_come_from_the_checkpoints_without_calling_a_replica(zoo_dir):
    handle = FakeHandle()
    backend = RayServeBackend(handle, specs=[ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))], kv_reserve_tokens=64)
    infos = asyncio.run(backend.models())
    assert [i.name for i in infos] == ["mux-2m"] and infos[0].context_length == 64
    assert handle.calls == 0


def test_a_gateway_without_the_checkpoints_asks_the_pool(tmp_path):
    handle = FakeHandle()
    backend = RayServeBackend(handle, owns_app=False, specs=[ModelSpec("elsewhere", str(tmp_path / "absent"))])
    assert [i.name for i in asyncio.run(backend.models())] == ["from-pool"]
    asyncio.run(backend.models())
    assert handle.calls == 2  # each listing asks the pool
