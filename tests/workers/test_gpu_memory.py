"""GPU memory accounting through NVML, on CPU with a fake pynvml: which physical GPU a replica
reads (NVML numbers GPUs physically, CUDA by CUDA_VISIBLE_DEVICES), a fractional replica's budget,
loads still in progress, and the allocator's cache given back after an eviction. The last test is
the same on a real GPU (marked `gpu`: run by loadtests/gpu_check.py, not in CI)."""

import asyncio
import sys
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import pytest

from workers.memory import NvmlMemory, nvml_memory
from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelSpec

GIB = 1024**3


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    uuid: str
    bus_id: str  # NVML's form: 00000000:BB:DD.0
    total: int = 80 * GIB
    used: Callable[[], int] = lambda: 0
    name: str = "Fake H100"


class FakeNvml:
    """The pynvml calls muxgate makes, over GPUs listed in NVML's (physical) order."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu]):
        self.gpus = gpus
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        domain, rest = bus_id.upper().split(":", 1)
        for gpu in self.gpus:
            if gpu.bus_id.split(":", 1)[1] == rest and int(gpu.bus_id.split(":")[0], 16) == int(domain, 16):
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle):
        return handle.uuid

    def nvmlDeviceGetName(self, handle):
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle):
        used = handle.used()
        return SimpleNamespace(total=handle.total, used=used, free=handle.total - used)


UUIDS = [f"{i}{i}{i}{i}{i}{i}{i}{i}-0000-4000-8000-00000000000{i}" for i in range(4)]


def four_gpus() -> FakeNvml:
    """A 4-GPU node; each GPU reports a different amount used, so reading the wrong one shows."""
    return FakeNvml([FakeGpu(f"GPU-{u}", f"00000000:{0x18 + 0x20 * i:02X}:00.0", used=lambda i=i: (i + 1) * GIB)
                     for i, u in enumerate(UUIDS)] + [FakeGpu("MIG-9f0e6b5c-1d2e-5f60-8a7b-0c1d2e3f4a5b", "x", 20 * GIB)])


@pytest.fixture
def fake_pynvml(monkeypatch):
    """The fake installed where muxgate imports pynvml; no CUDA in torch's view (CPU)."""
    fake = four_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


@pytest.mark.parametrize("visible, device, physical", [
    ("2,3", "cuda", 2),  # Ray gave this replica GPUs 2 and 3: its cuda:0 is physical 2
    ("2,3", "cuda:1", 3),
    ("3", "cuda", 3),
    (f"GPU-{UUIDS[1]}", "cuda", 1),  # Ray or Kubernetes may name GPUs by UUID
    (f"GPU-{UUIDS[3]},GPU-{UUIDS[0]}", "cuda:1", 0),
    (f"GPU-{UUIDS[2][:8]}", "cuda", 2),  # CUDA accepts a unique UUID prefix
    ("MIG-9f0e6b5c-1d2e-5f60-8a7b-0c1d2e3f4a5b", "cuda", 4),  # a MIG instance
    (None, "cuda:1", 1),  # no mapping: CUDA's numbering is NVML's
])
def test_nvml_reads_the_gpu_cuda_visible_devices_gives_the_replica(fake_pynvml, monkeypatch, visible, device, physical):
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    memory = nvml_memory(device)
    gpu = fake_pynvml.gpus[physical]
    assert memory.uuid == gpu.uuid
    assert memory.used() == gpu.used() and memory.total() == gpu.total


def test_torch_device_uuid_or_pci_bus_id_wins_over_the_environment(fake_pynvml, monkeypatch):
    """With CUDA up, torch's own device properties name the GPU exactly (whatever the device order)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # misleading on purpose: CUDA_DEVICE_ORDER may differ
    by_uuid = NvmlMemory(0, nvml=fake_pynvml, props=SimpleNamespace(uuid=UUIDS[3]))  # torch prints no GPU- prefix
    assert by_uuid.uuid == fake_pynvml.gpus[3].uuid
    by_bus = NvmlMemory(1, nvml=fake_pynvml, props=SimpleNamespace(uuid=None, pci_domain_id=0, pci_bus_id=0x38,
                                                                   pci_device_id=0))
    assert by_bus.uuid == fake_pynvml.gpus[1].uuid


def test_nvml_init_is_done_through_the_module_muxgate_imports(fake_pynvml):
    nvml_memory("cuda")
    assert fake_pynvml.inits >= 1
    assert nvml_memory("cpu") is None


def test_a_fractional_replica_budgets_its_share_of_the_card(fake_pynvml, monkeypatch, zoo_dir):
    """num_gpus 0.5: two replicas share the card, so each may hold half of it, not all of it."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    from workers.serve_app import PoolOptions, PoolReplica

    specs = [ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))]
    replica = PoolReplica.func_or_class(specs, PoolOptions(num_gpus=0.5, torch_threads=1))
    try:
        assert replica.pool.device == "cuda"
        assert replica.pool.nvml.uuid == fake_pynvml.gpus[1].uuid
        assert replica.pool.ledger.capacity == 40 * GIB
    finally:
        replica.pool.close()
    explicit = NvmlMemory(0, nvml=fake_pynvml)
    assert ModelPool(specs, device_memory=explicit, gpu_share=0.25).ledger.capacity == 20 * GIB
    assert ModelPool(specs, device_memory=explicit, gpu_share=2).ledger.capacity == 80 * GIB  # device 0 only
    assert ModelPool(specs, device_memory=explicit, gpu_share=0.25,
                     device_budget_bytes=7 * GIB).ledger.capacity == 7 * GIB  # device_budget_mb wins


def _card_pool(zoo_dir, names, free_bytes, **kw):
    """A CPU pool whose device memory is one fake GPU with `free_bytes` free: a model's bytes count
    as allocated on it once its load is done (until its eviction), as a real load's would."""
    holder = {}

    def allocated():
        pool = holder.get("pool")
        return sum(r.reserved for r in pool._resident.values()) if pool else 0

    released = []
    gpu = FakeGpu("GPU-card", "00000000:18:00.0", total=free_bytes, used=allocated)
    memory = NvmlMemory(0, nvml=FakeNvml([gpu]), held=allocated, release_cached=lambda: released.append(1))
    pool = ModelPool([ModelSpec(n, str(zoo_dir / n)) for n in names], device_memory=memory,
                     device_budget_bytes=100 * GIB, kv_reserve_tokens=64, torch_threads=1, **kw)
    holder["pool"] = pool
    return pool, released


def test_loads_in_progress_count_against_nvml_free_memory(zoo_dir):
    """Two overlapping loads that each fit NVML's free memory, but not together: the second must
    wait for room, since the first one's bytes are reserved but not yet on the device."""
    from workers.zoo import build_zoo

    names = ["mux-2m", "mux-2m-b"]
    build_zoo(zoo_dir, names, progress=False)
    probe = ModelPool([ModelSpec(n, str(zoo_dir / n)) for n in names], kv_reserve_tokens=64)
    size = max(probe.footprint(n).total for n in names)
    pool, _ = _card_pool(zoo_dir, names, free_bytes=size * 3 // 2)
    gate = threading.Event()
    materialize = pool._materialize

    def slow_materialize(model, predicted):
        if model == "mux-2m":
            assert gate.wait(30)
        return materialize(model, predicted)

    pool._materialize = slow_materialize
    peaks = []

    async def go():
        first = asyncio.ensure_future(answer(pool, "mux-2m"))
        while not pool.ledger.used():  # the first load's bytes are reserved
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(answer(pool, "mux-2m-b"))
        for _ in range(20):  # the second load tries while the first is still materialising
            peaks.append(pool.ledger.used())
            await asyncio.sleep(0.01)
        gate.set()
        for _ in range(3000):
            peaks.append(pool.ledger.used())
            if first.done() and second.done():
                break
            await asyncio.sleep(0.01)
        return await first, await second

    try:
        first, second = asyncio.run(go())
    finally:
        gate.set()
    assert first[-1].finish_reason and second[-1].finish_reason
    assert max(peaks) <= size * 3 // 2, "two loads were reserved on a card with room for one"
    assert pool.evictions == 1  # the second made room by evicting the first once it was idle
    pool.close()


def test_the_allocator_cache_is_given_back_after_an_eviction(zoo_dir):
    """NVML counts what torch's caching allocator keeps, so an eviction on a GPU must empty it."""
    pool, released = _card_pool(zoo_dir, ["mux-2m", "mux-5m"], free_bytes=100 * GIB, max_resident=1)

    async def go():
        await answer(pool, "mux-2m")
        assert released == []
        await answer(pool, "mux-5m")  # evicts mux-2m

    asyncio.run(go())
    assert pool.evictions == 1 and released == [1]
    pool.close()


async def answer(pool, model, max_tokens=2):
    req = GenerationRequest("t", prompt="hi", max_tokens=max_tokens, temperature=0)
    return [c async for c in pool.generate(model, req)]


@pytest.mark.gpu
def test_on_a_real_gpu_nvml_reads_torchs_device_and_eviction_frees_it(zoo_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for index in range(torch.cuda.device_count()):
        memory = nvml_memory(f"cuda:{index}")
        props = torch.cuda.get_device_properties(index)
        assert memory.uuid.split("-", 1)[1] == str(props.uuid).removeprefix("GPU-")
        assert memory.total() == pytest.approx(torch.cuda.mem_get_info(index)[1], rel=0.01)
    pool = ModelPool([ModelSpec(n, str(zoo_dir / n)) for n in ("mux-2m", "mux-5m")], device="cuda",
                     max_resident=1, kv_reserve_tokens=64)
    assert pool.nvml is not None

    async def go():
        await answer(pool, "mux-5m")
        before = torch.cuda.memory_reserved()
        await answer(pool, "mux-2m")  # evicts mux-5m (the larger): its bytes leave torch's cache too
        return before

    assert torch.cuda.memory_reserved() < asyncio.run(go())
    pool.close()
