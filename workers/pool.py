"""The model pool of one replica: which models are resident, in how many bytes, and serving on them.

Every resident model holds a reservation in an exact byte ledger (predicted weights + a KV
reserve) taken before its load starts, so concurrent loads can never overshoot the budget; on a
GPU the device's real free memory (NVML, all processes) must also cover it, less what loads in
progress reserved but have not allocated yet. A load that needs room evicts idle models chosen
by the eviction policy: none with requests in flight, none whose engine is mid-step (a cancelled
request's step runs to its end), no draft lent to a step still running. An evicted model's engine
is closed and its device memory given back in a thread (the event loop keeps serving), and the
load that evicted it waits for that before it allocates; it stays warm in host memory while the
host tier has room, else it is cold (disk).
One load per model at a time; loads of different models overlap; a request that cannot get its
model within `load_timeout_s` gets PoolOverloaded (503 + Retry-After), not a hang.
Models take turns: a load that finds no idle model to evict pauses busy ones, cheapest swap
first (measured reload seconds x the requests it serves, per byte freed): a paused model admits
no new request (they wait at its gate), its running ones finish or, still running
`preempt_after_s` after the pause, are preempted (their KV released, each recomputed when its
model is back, unless finishing it is cheaper), and once idle it is evicted like any other; its
waiters, preempted streams among them, then reload it (the swap back) the same way. A cold
model's request thus gets its load within `preempt_after_s` plus a step plus the loads.
Requests waiting for their first token (for a load, for admission, in prefill) are bounded per
replica by `max_queued_requests`, shared by team weight: a full queue refuses a team already
holding its weighted part with QueueFull (429 + Retry-After); a team under its part still gets in,
up to twice the bound in all, so one team's flood cannot lock the others out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import AsyncIterator

from workers.checkpoint import servable_models
from workers.eviction import make_policy
from workers.fair_queue import effective_weight
from workers.dtypes import default_dtype
from workers.footprint import Footprint, predict_footprint
from workers.memory import ByteLedger, DeviceMemory, nvml_memory
from workers.types import (
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    ModelLoadFailed,
    ModelNotFound,
    ModelSpec,
    PoolError,
    PoolOverloaded,
    QueueFull,
)
from workers.sequence_stream import Preempted

log = logging.getLogger(__name__)
GIB = 1024**3
_side_loads = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="side-load")
_retirements = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="evict")


@dataclass
class Resident:
    engine: object
    reserved: int  # bytes held in the ledger
    measured_weight_bytes: int
    predicted: Footprint
    load_kind: str  # "cold" (disk) or "warm" (host)
    load_seconds: float


def _default_capacity(device: str, nvml, gpu_share: float) -> int:
    if nvml is not None:  # a replica given a fraction of the GPU (num_gpus 0.5) may hold that share of it
        return int(nvml.total() * min(1.0, gpu_share))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class ModelPool:
    """Serves many models from one replica within a device byte budget.

    `gpu_share`: the fraction of its GPU this replica was given (Ray's num_gpus); without
    `device_budget_bytes` it budgets that share of the card's total memory.
    `preempt_after_s`: a model paused for another's load has the sequences still running this long
    after the pause (and every such period after, those that entered since) preempted by recompute
    (`Engine.preempt`: kept when finishing is cheaper); None or 0: never (they finish).
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        device: str = "cpu",
        max_resident: int | None = None,
        load_timeout_s: float = 120.0,
        replica_id: str | None = None,
        max_running_per_model: int = 64,
        torch_threads: int | None = None,
        device_budget_bytes: int | None = None,
        host_budget_bytes: int = 0,
        eviction: str = "gdsf",
        kv_reserve_tokens: int = 2048,
        prefix_cache_bytes: int = 64 * 1024 * 1024,
        gpu_share: float = 1.0,
        device_memory: DeviceMemory | None = None,  # default: NVML on a cuda device (tests pass a fake)
        max_queued_requests: int = 256,
        preempt_after_s: float | None = 2.0,
    ):
        from workers.weights import HostTier

        self.specs = {s.name: s for s in specs}
        self.device = device
        self.max_resident = max_resident
        self.load_timeout_s = load_timeout_s
        self.replica_id = replica_id or f"local-{os.getpid()}"
        self.max_running_per_model = max_running_per_model
        self.torch_threads = torch_threads
        self.kv_reserve_tokens = kv_reserve_tokens
        self.max_queued_requests = max_queued_requests
        self.preempt_after_s = preempt_after_s or None
        self._preempt_timers: dict[str, asyncio.TimerHandle] = {}  # paused model -> its next preemption
        self.preemptions = 0  # times a request was preempted (then resumed, or dropped when its client left)
        self._recomputed_evicted = 0  # recomputed tokens of engines evicted since (theirs are gone with them)
        self._queued: dict[str | None, int] = {}  # team -> requests waiting for their first token
        self._weights: dict[str | None, float] = {}  # team -> the weight its latest request carried
        self.queue_refusals = 0
        self.prefix_cache_bytes = prefix_cache_bytes
        self.nvml = device_memory if device_memory is not None else nvml_memory(device)
        self.ledger = ByteLedger(device_budget_bytes or _default_capacity(device, self.nvml, gpu_share))
        self.host = HostTier(host_budget_bytes, pin=device.startswith("cuda"))
        self.policy = make_policy(eviction)
        self._resident: dict[str, Resident] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._in_flight: dict[str, int] = {}
        self._waiting_for_load: dict[str, int] = {}
        self._info: dict[str, ModelInfo] = {}
        self._footprints: dict[str, Footprint] = {}
        self._tokenizers: dict[str, object] = {}
        self._draft_checks: dict[tuple[str, str], bool] = {}  # (model, draft) -> same tokenizer
        self._warned: set[tuple] = set()
        self._room = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # where loads wait for room
        self._borrowers: dict[str, set[str]] = {}  # draft -> models whose sequences it was lent to
        self._retiring: dict[str, concurrent.futures.Future] = {}  # evicted, device memory not yet freed
        self._paused: dict[str, asyncio.Event] = {}  # model -> set when it may admit requests again
        self._paused_for: dict[str, set[str]] = {}  # a waiting load -> the busy models it paused
        self._paused_since: dict[str, float] = {}  # model -> when its current pause began
        self.pauses = 0
        self.paused_seconds: dict[str, float] = {}  # model -> seconds it spent paused (its new requests waiting)
        self.loads = {"cold": 0, "warm": 0}
        self.load_seconds = {"cold": 0.0, "warm": 0.0}
        self.loaded_bytes = {"cold": 0, "warm": 0}
        self.evictions = 0
        self.load_failures = 0

    # ---- what the pool can serve ------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every servable model, resident or not (read from the checkpoints, not loaded). The
        context length is the one the engine enforces: the checkpoint's, capped by the KV reserve a
        model's running batch may hold (`kv_reserve_tokens`)."""
        return servable_models(self.specs.values(), self.kv_reserve_tokens, self._info)

    def dtype_name(self, spec: ModelSpec) -> str:
        return spec.dtype or default_dtype(self.device)

    def footprint(self, model: str) -> Footprint:
        if model not in self._footprints:
            spec = self.specs[model]
            self._footprints[model] = predict_footprint(model, spec.path, self.dtype_name(spec),
                                                        self.kv_reserve_tokens, spec.quantization,
                                                        extra_kv_bytes=self.prefix_cache_bytes)
        return self._footprints[model]

    def stats(self) -> dict:
        return {
            "replica": self.replica_id,
            "device": self.device,
            "device_capacity_bytes": self.ledger.capacity,
            "device_reserved_bytes": self.ledger.used(),
            "device_free_bytes_nvml": self.nvml.free() if self.nvml else None,
            "host_capacity_bytes": self.host.capacity,
            "host_used_bytes": self.host.used(),
            "host_models": self.host.names(),
            "resident": list(self._resident),
            "resident_bytes": {n: r.reserved for n, r in self._resident.items()},
            "measured_weight_bytes": {n: r.measured_weight_bytes for n, r in self._resident.items()},
            "kv_bytes": {n: r.engine.kv_bytes for n, r in self._resident.items()},
            "prefix_hit_tokens": {n: r.engine.prefix_hit_tokens for n, r in self._resident.items()},
            "draft_tokens": {n: {"proposed": r.engine.draft_proposed, "accepted": r.engine.draft_accepted}
                             for n, r in self._resident.items() if r.engine.draft_proposed},
            "loading": list(self._loading),
            "in_flight": {k: v for k, v in self._in_flight.items() if v},
            "queue_depth": {k: v for k, v in self._waiting_for_load.items() if v},
            "queued_requests": sum(self._queued.values()),
            "queue_refusals": self.queue_refusals,
            "loads": dict(self.loads),
            "load_seconds": dict(self.load_seconds),
            "loaded_bytes": dict(self.loaded_bytes),
            "evictions": self.evictions,
            "paused": list(self._paused),
            "pauses": self.pauses,
            "paused_seconds": self._paused_seconds_now(),
            "preemptions": self.preemptions,
            "recomputed_tokens": self._recomputed_evicted + sum(r.engine.recomputed_tokens
                                                                 for r in self._resident.values()),
            "host_demotions": self.host.demotions,
            "load_failures": self.load_failures,
            "eviction_policy": self.policy.name,
        }

    def waiting_by_model(self) -> dict[str, int]:
        """Per model, its requests waiting for their first token: for its load, or for a row in its
        engine's running batch (what makes a replica hot for it: workers/replica_ranking.py)."""
        waiting = {name: n for name, n in self._waiting_for_load.items() if n}
        for name, resident in list(self._resident.items()):
            waiting[name] = waiting.get(name, 0) + resident.engine.queued
        return {name: n for name, n in waiting.items() if n}

    def blocked_loads(self) -> list[str]:
        """Loads waiting for room (no reservation in the ledger yet): their requests wait behind the
        resident models, which the router and the autoscaler read as memory pressure."""
        reserved = self.ledger.holders()
        return [name for name, n in self._waiting_for_load.items() if n and name not in reserved]

    # ---- serving ----------------------------------------------------------------------------

    async def generate(self, model: str, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream `req` on `model`, loading it first if needed. The model cannot be evicted
        while this stream is open."""
        if model not in self.specs:
            raise ModelNotFound(f"The model '{model}' does not exist", model=model)
        self._enqueue(req)
        queued = True
        self._in_flight[model] = self._in_flight.get(model, 0) + 1
        draft = None
        try:
            resident = await self._turn(model)
            self.policy.touch(model, resident.reserved, resident.load_seconds)
            draft = self._draft_for(model, req)
            stream = resident.engine.generate(req, draft=draft.engine.model if draft else None)
            while stream is not None:
                try:
                    # closed with this stream, not when collected: the engine drops the sequence at its next step
                    async with contextlib.aclosing(stream) as chunks:
                        async for chunk in chunks:
                            if queued:
                                queued = self._dequeue(req)
                            chunk.replica = self.replica_id
                            yield chunk
                    stream = None
                except Preempted as preempted:
                    draft = self._release_draft(req, draft)  # it decodes on without its draft
                    stream = await self._resumed(model, preempted)
        finally:
            if queued:
                self._dequeue(req)
            self._in_flight[model] -= 1
            self._release_draft(req, draft)
            self._room_changed()  # an idle model can be evicted for a waiting load now

    async def _resumed(self, model: str, preempted: Preempted) -> AsyncIterator[GenerationChunk]:
        """A stream preempted from `model`'s paused engine: it waits at the model's gate like a new
        request (not in flight, so the model can drain and be evicted), then goes on in the model's
        engine then resident (the one reloaded by the swap back) where it stopped. Not back within
        `load_timeout_s`: PoolOverloaded."""
        self.preemptions += 1
        resident = await self._turn(model)
        self.policy.touch(model, resident.reserved, resident.load_seconds)
        return resident.engine.resume(preempted)

    def _release_draft(self, req: GenerationRequest, draft: Resident | None) -> None:
        """The stream no longer holds its draft model in flight. Returns None (no draft now)."""
        if draft is not None:
            self._in_flight[req.draft_model] -= 1
        return None

    async def _turn(self, model: str) -> Resident:
        """The resident model once it admits requests: while it is paused for another model's load,
        wait at its gate without counting as in flight (so it can drain and be evicted), then get it
        again (reloaded, if it was evicted meanwhile). Called counted in flight; returns counted."""
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            waited_for_load = model not in self._resident
            resident = await self._resident_model(model)
            gate = self._paused.get(model)
            # a request that waited for this load is served even if the model was paused meanwhile:
            # every load serves its waiters once, so two models swapping cannot starve each other
            if (gate is None or waited_for_load) and self._resident.get(model) is resident:
                return resident
            self._in_flight[model] -= 1
            self._room_changed()  # the paused model may be idle now
            try:
                if gate is not None:
                    await asyncio.wait_for(gate.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise PoolOverloaded(f"model '{model}' is paused for other models' loads and did not get its turn "
                                     f"back within {self.load_timeout_s:.0f}s; retry shortly",
                                     retry_after=max(1.0, min(30.0, self.load_timeout_s / 4)), model=model) from None
            finally:
                self._in_flight[model] += 1

    def _pause_for(self, model: str, nbytes: int) -> None:
        """No idle model frees enough for `model`'s load: pause busy ones until idle + paused would,
        cheapest swap first. A paused model finishes what it admitted (or, after `preempt_after_s`, has
        it preempted: `_preempt`) and admits nothing new."""
        paused = self._paused_for.setdefault(model, set())
        others = [n for n in self._resident if n != model]
        count = len(self._resident) + len(self._loading)
        freed = self.ledger.free()
        for n in others:
            if n in self._paused or self._evictable(n):
                freed, count = freed + self._resident[n].reserved, count - 1

        def enough() -> bool:
            return freed >= nbytes and (self.max_resident is None or count <= self.max_resident)

        busy = sorted((n for n in others if n not in self._paused and not self._evictable(n)), key=self._swap_cost)
        for victim in busy:
            if enough():
                break
            self._paused[victim] = asyncio.Event()
            self._paused_since[victim] = time.monotonic()
            paused.add(victim)
            self.pauses += 1
            freed, count = freed + self._resident[victim].reserved, count - 1
            log.info("pausing %s so that %s can load", victim, model)
            if self.preempt_after_s is not None:
                self._preempt_timers[victim] = asyncio.get_running_loop().call_later(
                    self.preempt_after_s, self._preempt, victim)

    def _preempt(self, model: str) -> None:
        """Timer of a paused model: preempt its sequences that have run `preempt_after_s` (entered
        its engine that long ago), and look again a period later while it stays paused, for those
        let in since (a load's waiters are served once even if paused: they get their period too)."""
        resident = self._resident.get(model)
        if model not in self._paused or resident is None:
            self._preempt_timers.pop(model, None)
            return
        log.debug("preempting %s: its sequences that entered over %.1fs ago", model, self.preempt_after_s)
        resident.engine.preempt(entered_before=time.monotonic() - self.preempt_after_s)
        self._preempt_timers[model] = asyncio.get_running_loop().call_later(self.preempt_after_s, self._preempt, model)

    def _swap_cost(self, model: str) -> float:
        """What pausing and swapping `model` out costs, per byte it frees: its measured reload
        seconds, paid by each request it is serving."""
        resident = self._resident[model]
        return resident.load_seconds * (1 + self._in_flight.get(model, 0)) / max(1, resident.reserved)

    def _unpause(self, model: str) -> None:
        timer = self._preempt_timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        gate = self._paused.pop(model, None)
        if gate is not None:
            since = self._paused_since.pop(model)
            self.paused_seconds[model] = self.paused_seconds.get(model, 0.0) + time.monotonic() - since
            gate.set()

    def _paused_seconds_now(self) -> dict[str, float]:
        """Seconds each model has spent paused, the pauses still running included."""
        now, out = time.monotonic(), dict(self.paused_seconds)
        for model, since in self._paused_since.items():
            out[model] = out.get(model, 0.0) + now - since
        return {m: round(s, 3) for m, s in out.items()}

    def _enqueue(self, req: GenerationRequest) -> None:
        """Count `req` as waiting for its first token, or refuse it: when the replica's queue is
        full and its team already holds its weighted part of it (or the queue is at twice the bound)."""
        team, total = req.team, sum(self._queued.values())
        self._weights[team] = effective_weight(req.weight, req.priority)  # as the engines' fair queue weighs it
        if total >= self.max_queued_requests:
            present = {t for t, n in self._queued.items() if n} | {team}
            part = self.max_queued_requests * self._weights[team] / sum(self._weights[t] for t in present)
            if total >= 2 * self.max_queued_requests or self._queued.get(team, 0) >= part:
                self.queue_refusals += 1
                raise QueueFull(f"this replica's queue is full ({total} requests waiting); retry shortly",
                                retry_after=1.0, queued=total)
        self._queued[team] = self._queued.get(team, 0) + 1

    def _dequeue(self, req: GenerationRequest) -> bool:
        """Its first token came (or it ended): no longer queued. Returns False (queued no more)."""
        left = self._queued[req.team] - 1
        if left:
            self._queued[req.team] = left
        else:  # teams come and go: keep only those with requests waiting
            del self._queued[req.team]
            self._weights.pop(req.team, None)
        return False

    def _draft_for(self, model: str, req: GenerationRequest) -> Resident | None:
        """The resident draft model for a speculative request, held in flight (not evictable)
        by the caller until the stream ends; None when the request does not speculate. A draft
        that is not resident is loaded in the background and this request decodes without it:
        speculation may make an answer faster, never later."""
        name = req.draft_model
        if not name or req.temperature > 0.0 or name == model:
            return None
        if name not in self.specs:
            self._warn_once(("draft", name), "draft model %r is not a pool model; decoding %s without it", name, model)
            return None
        draft = self._resident.get(name)
        if draft is None:
            if name not in self._loading:
                task = asyncio.ensure_future(self._resident_model(name))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failure: logged by _load
            return None
        if not self._drafts_compatible(model, name) or name in self._paused:  # a paused draft must drain too
            return None
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        # the draft's weights run inside `model`'s steps, which may outlast this stream
        self._borrowers.setdefault(name, set()).add(model)
        self.policy.touch(name, draft.reserved, draft.load_seconds)
        return draft

    def _drafts_compatible(self, model: str, draft: str) -> bool:
        from workers.speculative import tokenizers_match

        key = (model, draft)
        if key not in self._draft_checks:
            self._draft_checks[key] = tokenizers_match(self._tokenizers[model], self._tokenizers[draft])
            if not self._draft_checks[key]:
                log.warning("draft model %s does not share %s's tokenizer; not speculating with it", draft, model)
        return self._draft_checks[key]

    def _warn_once(self, key: tuple, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def _resident_model(self, model: str) -> Resident:
        resident = self._resident.get(model)
        if resident is not None:
            return resident
        task = self._loading.get(model)
        if task is None:  # single flight: later callers wait on the same load
            task = asyncio.ensure_future(self._load(model))
            self._loading[model] = task
            task.add_done_callback(lambda t: self._load_done(model, t))
        self._waiting_for_load[model] = self._waiting_for_load.get(model, 0) + 1
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.load_timeout_s)
        except asyncio.TimeoutError:
            raise PoolOverloaded(
                f"model '{model}' could not be loaded within {self.load_timeout_s:.0f}s (the replica's memory "
                "is held by models serving other requests); retry shortly",
                retry_after=max(1.0, min(30.0, self.load_timeout_s / 4)), model=model) from None
        finally:
            self._waiting_for_load[model] -= 1

    def _load_done(self, model: str, task: asyncio.Task) -> None:
        self._loading.pop(model, None)
        if not task.cancelled():
            task.exception()  # retrieved: its waiters got the error, or gave up before it came

    # ---- loading and eviction ---------------------------------------------------------------

    async def _load(self, model: str) -> Resident:
        try:
            predicted = self.footprint(model)
        except PoolError:
            self.load_failures += 1
            raise
        if predicted.total > self.ledger.capacity:
            self.load_failures += 1
            raise ModelLoadFailed(
                f"model '{model}' needs {predicted.total / GIB:.2f} GiB (weights + KV reserve) but the replica's "
                f"device budget is {self.ledger.capacity / GIB:.2f} GiB", model=model)
        self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.load_timeout_s
        try:
            while not self._try_reserve(model, predicted.total):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolOverloaded(f"no room for model '{model}' within {self.load_timeout_s:.0f}s",
                                         retry_after=5.0, model=model)
                self._pause_for(model, predicted.total)
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:  # evicted ones were let go by _evict; the others go on serving
            for victim in self._paused_for.pop(model, ()):
                self._unpause(victim)
        try:
            leaving = [asyncio.wrap_future(f) for f in list(self._retiring.values())]  # list: atomic copy
            if leaving:  # the evicted models' device memory is given back before this load takes it
                await asyncio.gather(*leaving, return_exceptions=True)
            resident = await asyncio.to_thread(self._materialize, model, predicted)
        except Exception as exc:
            self.ledger.release(model)
            self._room_changed()
            self.load_failures += 1
            if isinstance(exc, PoolError):
                raise
            log.exception("loading %s failed", model)
            raise ModelLoadFailed(f"model '{model}' failed to load: {type(exc).__name__}: {exc}",
                                  model=model) from exc
        self._resident[model] = resident
        return resident

    def _try_reserve(self, model: str, nbytes: int) -> bool:
        """Reserve `nbytes` for `model`, evicting idle models if that makes it fit (in the ledger,
        in `max_resident`, and on a GPU in the device's real room). Runs without awaiting, so
        check-evict-reserve is atomic on the event loop."""
        idle = [n for n in self._resident if self._evictable(n)]
        victims: list[str] = []
        freed = 0
        budget_free = self.ledger.free()
        # other processes, or our loads still in progress, may hold what the budget would allow
        device_free = self._device_room() if self.nvml is not None else None

        def fits() -> bool:
            if self.max_resident is not None and len(self._resident) - len(victims) + len(self._loading) > self.max_resident:
                return False
            return budget_free + freed >= nbytes and (device_free is None or device_free + freed >= nbytes)

        while not fits() and idle:
            victim = self.policy.victim(idle)
            idle.remove(victim)
            victims.append(victim)
            freed += self._resident[victim].reserved
        if not fits():
            return False
        for victim in victims:
            self._evict(victim)
        return self.ledger.reserve(model, nbytes)

    def _evictable(self, model: str) -> bool:
        """No request of its own in flight, its engine idle (not mid-step), and not a draft lent
        to a model whose engine is still stepping."""
        if self._in_flight.get(model) or not self._resident[model].engine.idle:
            return False
        borrowers = self._borrowers.get(model)
        if borrowers:  # a borrower gone idle, or whose sequences no longer hold the draft, is done with it
            weights = self._resident[model].engine.model
            borrowers -= {b for b in borrowers if b not in self._resident or self._resident[b].engine.idle
                          or not self._resident[b].engine.lends(weights)}
        return not borrowers

    def _device_room(self) -> int:
        """The device's free memory (NVML, all processes) less what our ledger holds for loads not
        yet on the card: reserved, but not in our allocator's bytes (which NVML counts as used)."""
        not_allocated = max(0, self.ledger.used() - self.nvml.held())
        return self.nvml.free() - not_allocated

    def _evict(self, model: str) -> None:
        """Take `model` out of service now (its ledger room goes to the load evicting it); close
        its engine and free its device memory in a thread."""
        resident = self._resident.pop(model)
        self.ledger.release(model)
        self._borrowers.pop(model, None)
        self._recomputed_evicted += resident.engine.recomputed_tokens
        self._unpause(model)  # its waiters reload it: the swap back
        self.evictions += 1
        self._retiring[model] = done = _retirements.submit(self._retire, model, [resident.engine], resident.reserved)
        done.add_done_callback(lambda _f: self._retired(model, done))

    def _retire(self, model: str, handed: list, reserved: int) -> None:
        """Runs in a thread: stop the engine (its scheduler thread joins), keep the model's object
        as a shell if it has a host copy, and give the device memory back. The engine comes in a
        list this frame empties: the executor keeps its call's arguments alive until it returns,
        and every reference must be gone before the allocator's cache is emptied."""
        engine = handed.pop()
        try:
            engine.close()
            self.host.retire(model, engine.model)  # tensors to meta; the object stays for a warm load
        except Exception:
            log.exception("closing evicted %s failed", model)
        # the last reference: the engine's KV and (cold) weights are freed here. No gc.collect(): a
        # closed engine holds no cycles (tested), and a full collection holds the GIL, stalling the
        # event loop for a third of a second in a replica's heap
        del engine
        if self.nvml is not None:
            self.nvml.release_cached()  # else NVML keeps counting the freed blocks as used
        log.info("evicted %s (%d bytes; %s)", model, reserved,
                 "warm in host memory" if model in self.host else "cold on disk")

    def _retired(self, model: str, done: concurrent.futures.Future) -> None:
        if self._retiring.get(model) is done:
            del self._retiring[model]
        self._wake_loads()  # NVML sees the freed memory now

    def _room_changed(self) -> None:
        self._room.set()

    def _wake_loads(self) -> None:
        """From any thread (an engine gone idle, an eviction done): loads waiting for room retry."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._room_changed)
        except RuntimeError:  # that loop is closed: no load waits on it
            pass

    def _materialize(self, model: str, predicted: Footprint) -> Resident:
        """Runs in a worker thread: bring the weights to the device and start an engine."""
        import torch

        from workers.engine import Engine
        from workers.weights import load_cold, load_tokenizer, load_warm, tensor_bytes

        if self.torch_threads:
            # few intra-op threads per process: several torch processes on few cores collapse otherwise
            torch.set_num_threads(self.torch_threads)
        spec = self.specs[model]
        dtype = getattr(torch, self.dtype_name(spec))
        host = self.host.get(model)
        started = time.perf_counter()
        tokenizer = None
        if model not in self._tokenizers:  # read the tokenizer while the weights load
            tokenizer = _side_loads.submit(load_tokenizer, spec.path)
        if host is not None:
            kind, weights = "warm", load_warm(spec.path, dtype, self.device, host, spec.quantization)
        else:
            kind, weights = "cold", load_cold(spec.path, dtype, self.device, spec.quantization)
        seconds = time.perf_counter() - started
        measured = tensor_bytes(weights)
        if measured > predicted.weight_bytes * 1.05:
            log.warning("%s: measured %d weight bytes, predicted %d", model, measured, predicted.weight_bytes)
        if tokenizer is not None:
            self._tokenizers[model] = tokenizer.result()
        # the engine's running batch stays within the KV reserve this model was admitted with
        engine = Engine(model, weights, self._tokenizers[model], device=self.device,
                        max_running=self.max_running_per_model, prefix_cache_bytes=self.prefix_cache_bytes,
                        kv_budget_bytes=predicted.kv_bytes_per_token * self.kv_reserve_tokens,
                        on_idle=self._wake_loads)
        self.loads[kind] += 1
        self.load_seconds[kind] += seconds
        self.loaded_bytes[kind] += measured
        if kind == "cold" and self.host.capacity:
            self.host.snapshot_async(model, weights)
        log.info("loaded %s (%s) in %.2fs, %d bytes", model, kind, seconds, measured)
        return Resident(engine, predicted.total, measured, predicted, kind, seconds)

    def warm_up(self) -> None:
        """Take the first load's one-time costs (imports, the tokenizer machinery) off the first
        request: call at replica start. Loads no model."""
        from workers.weights import warm_up

        for spec in self.specs.values():
            try:
                warm_up(spec.path)
                return
            except Exception as exc:  # a broken checkpoint fails its own loads later, with the reason
                log.warning("warm-up with %s failed: %s", spec.name, exc)

    def close(self) -> None:
        """Stop every engine (joining their threads: call it off the event loop, which it blocks)."""
        concurrent.futures.wait(list(self._retiring.values()))
        for name in list(self._resident):
            self._resident.pop(name).engine.close()
            self.ledger.release(name)
