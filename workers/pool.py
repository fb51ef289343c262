"""The model pool: which models are resident, loading them once, and serving requests on them.

This is the simple pool of the foundation: residency is bounded by a model count and evicts the
least recently used idle model. Byte accounting and tiered weights replace that policy without
changing this class's public face (`generate`, `models`, `stats`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import AsyncIterator

from workers.checkpoint import read_model_info
from workers.types import (
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    ModelLoadFailed,
    ModelNotFound,
    ModelSpec,
    PoolError,
    PoolOverloaded,
)

log = logging.getLogger(__name__)


class ModelPool:
    """Serves many models from one process; loads on first use, one load per model at a time."""

    def __init__(
        self,
        specs: list[ModelSpec],
        device: str = "cpu",
        max_resident: int | None = None,
        load_timeout_s: float = 120.0,
        replica_id: str | None = None,
        max_running_per_model: int = 64,
        torch_threads: int | None = None,
    ):
        self.specs = {s.name: s for s in specs}
        self.device = device
        self.max_resident = max_resident
        self.load_timeout_s = load_timeout_s
        self.replica_id = replica_id or f"local-{os.getpid()}"
        self.max_running_per_model = max_running_per_model
        self.torch_threads = torch_threads
        self._resident: OrderedDict[str, object] = OrderedDict()  # name -> Engine, LRU order
        self._loading: dict[str, asyncio.Task] = {}
        self._in_flight: dict[str, int] = {}
        self._info: dict[str, ModelInfo] = {}
        self.loads = 0
        self.evictions = 0

    def models(self) -> list[ModelInfo]:
        """Every servable model, resident or not (read from the checkpoints, not loaded)."""
        out = []
        for name, spec in self.specs.items():
            if name not in self._info:
                try:
                    self._info[name] = read_model_info(name, spec.path)
                except ModelLoadFailed as exc:
                    log.warning("%s", exc)
                    continue
            out.append(self._info[name])
        return out

    def stats(self) -> dict:
        return {
            "replica": self.replica_id,
            "resident": list(self._resident),
            "loading": list(self._loading),
            "in_flight": {k: v for k, v in self._in_flight.items() if v},
            "loads": self.loads,
            "evictions": self.evictions,
        }

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream `req` on `model`, loading it first if needed. The model cannot be evicted
        while this stream is open."""
        if model not in self.specs:
            raise ModelNotFound(f"The model '{model}' does not exist", model=model)
        self._in_flight[model] = self._in_flight.get(model, 0) + 1
        try:
            engine = await self._engine(model)
            async for chunk in engine.generate(req):
                chunk.replica = self.replica_id
                yield chunk
        finally:
            self._in_flight[model] -= 1
            self._make_room()  # a model kept over the limit while busy can go now

    async def _engine(self, model: str):
        engine = self._resident.get(model)
        if engine is not None:
            self._resident.move_to_end(model)
            return engine
        task = self._loading.get(model)
        if task is None:  # single flight: later callers wait on the same load
            task = asyncio.ensure_future(self._load(model))
            self._loading[model] = task
            task.add_done_callback(lambda _t: self._loading.pop(model, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.load_timeout_s)
        except asyncio.TimeoutError:
            raise PoolOverloaded(
                f"model '{model}' is still loading after {self.load_timeout_s:.0f}s; retry shortly",
                retry_after=max(1.0, self.load_timeout_s / 4),
                model=model,
            ) from None

    async def _load(self, model: str):
        from workers.engine import Engine  # torch is imported only where models run

        if self.torch_threads:
            import torch

            # few intra-op threads per process: several torch processes on few cores collapse otherwise
            torch.set_num_threads(self.torch_threads)
        self._make_room(loading=len(self._loading))
        spec = self.specs[model]
        started = time.perf_counter()
        try:
            engine = await asyncio.to_thread(
                Engine.load, model, spec.path, self.device, spec.dtype, max_running=self.max_running_per_model
            )
        except PoolError:
            raise
        except Exception as exc:
            log.exception("loading %s from %s failed", model, spec.path)
            raise ModelLoadFailed(f"model '{model}' failed to load: {type(exc).__name__}: {exc}", model=model) from exc
        self._resident[model] = engine
        self.loads += 1
        log.info("loaded %s in %.2fs", model, time.perf_counter() - started)
        return engine

    def _make_room(self, loading: int = 0) -> None:
        """Evict least recently used idle models until resident + `loading` fits the limit."""
        if self.max_resident is None:
            return
        while len(self._resident) + loading > self.max_resident:
            idle = [n for n in self._resident if not self._in_flight.get(n)]
            if not idle:
                return  # every resident model is busy; over-commit rather than break a stream
            victim = idle[0]
            self._resident.pop(victim).close()
            self.evictions += 1

    def close(self) -> None:
        for engine in self._resident.values():
            engine.close()
        self._resident.clear()
