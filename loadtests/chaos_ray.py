"""The chaos bench's Ray fault: the pool's Serve replica actor killed while it streams.

A local Ray (its own, `address="local"`: never someone else's cluster) runs the `pool` Serve
application with one replica; the gateway runs in this process on a uvicorn thread in front of it
(the same create_app + RayServeBackend as `muxgate serve`), on a SQLite store. The replica is found
by its actor name (Serve names replica actors `SERVE_REPLICA::<app>#<deployment>#<id>` in the
`serve` namespace; `ray.util.list_named_actors` reads them from the GCS, no dashboard needed) and
killed with `ray.kill(..., no_restart=True)`; Serve's controller then starts a new replica.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx

from loadtests.chaos_client import CLIENT_TIMEOUT, Load, LongStream, call, chat
from loadtests.chaos_faults import account, warm
from loadtests.chaos_kit import budget_for, gateway_config
from loadtests.chaos_ledger import Admin, FaultReport, read_ledger

REPLICA_PREFIX = "SERVE_REPLICA::pool#ModelPool#"
SERVE_NAMESPACE = "serve"


def replica_actors() -> list[str]:
    """Names of the pool's live replica actors."""
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(REPLICA_PREFIX))


def kill_replica(name: str) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)


def pool_running() -> bool:
    from ray import serve

    try:
        app = serve.status().applications.get("pool")
    except Exception:
        return False
    return app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING"


class KeepPool:
    """The gateway's backend, minus closing the pool: the fault tears Ray down itself."""

    def __init__(self, backend):
        self.backend = backend

    def generate(self, model, req):
        return self.backend.generate(model, req)

    async def models(self):
        return await self.backend.models()

    async def stats(self):
        return await self.backend.stats()

    async def close(self):
        return None


class ThreadGateway:
    """The gateway app on a uvicorn thread of this process."""

    def __init__(self, app, store_url: str):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="chaos-gateway")
        self.store_url = store_url
        self.process = None

    def start(self, timeout_s: float = 120.0) -> "ThreadGateway":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway thread did not start")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def _until(condition, timeout_s: float, period_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(period_s)
    return False


async def replica_killed(zoo_dir: Path, workdir: Path, workers: int = 2, before: int = 4,
                         budget_requests: int = 16, recovery_timeout_s: float = 150.0) -> FaultReport:
    """Kill the replica mid-stream under load: the stream ends with an in-band error event and a
    usage record of the tokens it got; requests not yet streaming get a clean error or wait for
    the new replica and succeed; Serve starts a new replica and later requests succeed."""
    import ray

    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend
    from workers.serve_app import shutdown_pool

    report = FaultReport("replica_killed")
    began, since = time.monotonic(), time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{(workdir / 'ray.db').resolve()}"
    config = parse_config(gateway_config(zoo_dir, store_url, stream_first_token_timeout_s=recovery_timeout_s,
                                         pool={"backend": "ray", "replicas": 1, "num_cpus": 0.5}))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             configure_logging=True)
    gw = None
    try:
        backend = await asyncio.to_thread(make_backend, config, True)
        gw = ThreadGateway(create_app(config, KeepPool(backend)), store_url).start()
        admin = Admin(gw.base_url)
        probe_key = await admin.open_team("ray-probe")
        budget = budget_for(budget_requests)
        key = await admin.budget_team("ray-load", budget)
        report.outcomes.extend(await warm(gw.base_url, probe_key))
        first = replica_actors()
        report.checks["replica_found"] = len(first) == 1
        load = Load(lambda: gw.base_url, key, workers=workers).start()
        await load.until_count(before)
        long_client = httpx.AsyncClient(timeout=CLIENT_TIMEOUT)
        long = LongStream(long_client, gw.base_url, probe_key, max_tokens=1500, label="killed-stream")
        report.checks["killed_mid_stream"] = await long.streaming()
        killed_at = time.monotonic()
        await asyncio.to_thread(kill_replica, first[0])
        killed = await long.result()
        report.outcomes.append(killed)
        report.checks["stream_ends_with_in_band_error"] = (killed.status == 200 and killed.in_band
                                                           and killed.error is not None)
        replaced = await _until(lambda: pool_running() and bool(replica_actors()) and replica_actors() != first,
                                recovery_timeout_s)
        report.checks["serve_started_a_new_replica"] = replaced
        report.notes["replica_restart_s"] = round(time.monotonic() - killed_at, 1)
        await load.until_budget_hit(max_requests=before + budget_requests * 3 + 10, timeout_s=recovery_timeout_s)
        report.outcomes += await load.stop()
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            later = await call(client, gw.base_url, probe_key, chat(max_tokens=4), stream=True, label="after")
        report.outcomes.append(later)
        # the probe team has no budget, so its request after recovery is the check; the budgeted
        # load may have spent its budget before the kill on a slow machine (then it only gets 429s)
        report.checks["later_requests_succeed"] = later.succeeded
        report.notes["load_succeeded_after_kill"] = sum(
            1 for o in report.outcomes if o.label == "load" and o.succeeded and o.started > killed_at)
        await long_client.aclose()
        await account(report, store_url, since, "ray-load", "ray-probe")
        probe_records = {r.request_id: r for r in (await read_ledger(store_url, "ray-probe", since)).records}
        record = probe_records.get(killed.request_id)
        report.checks["killed_stream_recorded_with_tokens_served"] = (
            record is not None and record.status == "error" and killed.chunks <= record.completion_tokens < 1500)
        report.notes["killed_stream"] = {"chunks_received": killed.chunks, "error": (killed.error or {}).get("code"),
                                         "recorded_completion_tokens": None if record is None else record.completion_tokens,
                                         "recorded_status": None if record is None else record.status}
        around = [o for o in report.outcomes if o.label == "load" and o.started <= killed_at + 5 and o.ended >= killed_at]
        report.notes["load_around_kill"] = {"succeeded": sum(o.succeeded for o in around),
                                            "errors": sorted({str(o.code) for o in around if not o.succeeded})}
        await admin.aclose()
    finally:
        if gw is not None:
            await asyncio.to_thread(gw.stop)
        await asyncio.to_thread(shutdown_pool)
    report.seconds = time.monotonic() - began
    return report
