"""Backends: where the gateway sends a routed request. One interface, several implementations.

`generate(model, req)` is an async iterator of GenerationChunk; closing it early cancels the
work behind it (the engine frees the sequence's slot).
"""

from __future__ import annotations

import asyncio
import time
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
    """The Ray Serve pool application, called through its DeploymentHandle.

    With no replica running (autoscaling to zero) a request waits at the handle while Serve starts
    one (the gateway's first-token timeout bounds it); the model list is read from the checkpoints
    here, so /v1/models and /readyz neither wait for a replica nor start one.
    """

    def __init__(self, handle, owns_app: bool = True, specs: list[ModelSpec] | None = None,
                 kv_reserve_tokens: int = 2048):
        self.handle = handle
        self.owns_app = owns_app  # False: the cluster runs the pool; leaving must not delete it
        self._stream = handle.options(stream=True)
        self._specs = list(specs or [])
        self._kv_reserve_tokens = kv_reserve_tokens
        self._infos: dict[str, ModelInfo] = {}
        self._listed_here: bool | None = None  # None: not tried; False: checkpoints not here, ask the pool

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        req.sent_at = time.time()  # a replica started after this counts the request's cold-start wait
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
        if self._listed_here is not False:
            from workers.checkpoint import servable_models

            infos = servable_models(self._specs, self._kv_reserve_tokens, self._infos)
            self._listed_here = bool(self._specs) and len(infos) == len(self._specs)
            if self._listed_here:
                return infos
        # checkpoints only on the cluster (an attached gateway): a replica lists them
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
