"""Backends: where the gateway sends a routed request. One interface, several implementations.

`generate(model, req)` is an async iterator of GenerationChunk; closing it early cancels the
work behind it (the engine frees the sequence's slot).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Protocol

from gateway.http.errors import BackendUnavailable
from workers.types import GenerationChunk, GenerationRequest, ModelInfo, ModelSpec, PoolError


class Backend(Protocol):
    def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    async def models(self) -> list[ModelInfo]: ...

    async def stats(self) -> list[dict]: ...

    async def close(self) -> None: ...


class InProcessBackend:
    """Models run in the gateway process (`--no-ray`, tests, tiny setups): same ModelPool class."""

    def __init__(self, specs: list[ModelSpec], **pool_options):
        from workers.pool import ModelPool  # imports no torch until a model loads

        self.pool = ModelPool(specs, **pool_options)

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in self.pool.generate(model, req):
            yield chunk

    async def models(self) -> list[ModelInfo]:
        return self.pool.models()

    async def stats(self) -> list[dict]:
        return [self.pool.stats()]

    async def close(self) -> None:
        await asyncio.to_thread(self.pool.close)  # joins engine threads; the event loop keeps serving


def _unwrap_ray_error(exc: BaseException) -> BaseException:
    """Ray wraps a replica's exception; give the gateway the pool's typed error back."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PoolError):
        return cause
    if isinstance(exc, PoolError):
        return exc
    name = type(exc).__name__
    if name in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError",
                "BackPressureError", "WorkerCrashedError"):
        return BackendUnavailable(f"model pool unavailable: {name}", retry_after=1.0)
    return exc


class RayServeBackend:
    """The Ray Serve pool application, called through its DeploymentHandle."""

    def __init__(self, handle, owns_app: bool = True):
        self.handle = handle
        self.owns_app = owns_app  # False: the cluster runs the pool; leaving must not delete it
        self._stream = handle.options(stream=True)

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        gen = self._stream.generate.remote(model, req)
        try:
            async for chunk in gen:
                yield chunk
        except Exception as exc:
            unwrapped = _unwrap_ray_error(exc)
            if unwrapped is exc:
                raise
            raise unwrapped from None
        finally:
            gen.cancel()  # no-op when finished; frees the replica's slot when the client left

    async def models(self) -> list[ModelInfo]:
        return await self.handle.models.remote()

    async def stats(self) -> list[dict]:
        from workers.serve_app import replica_stats

        return await replica_stats()

    async def close(self) -> None:
        if self.owns_app:
            from workers.serve_app import shutdown_pool

            shutdown_pool()
        else:
            import ray

            ray.shutdown()
