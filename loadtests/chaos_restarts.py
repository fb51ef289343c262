"""The chaos bench's process faults: a gateway killed (SIGKILL) or stopped (SIGTERM) under load and
restarted on its SQLite file, a request answered just before a kill, and a Redis store killed and
restarted under two gateways. Each returns a FaultReport (loadtests/chaos_ledger.py).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import httpx

from loadtests.chaos_client import CLIENT_TIMEOUT, Load, LongStream, call, chat
from loadtests.chaos_faults import account, warm
from loadtests.chaos_kit import GatewayProcess, RedisProcess, budget_for, gateway_config
from loadtests.chaos_ledger import Admin, FaultReport, settled_ledger


# ---- the gateway killed and restarted on its SQLite file --------------------------------------


async def _after_restart(report: FaultReport, gw: GatewayProcess, admin: Admin, kind: str, probe_key: str,
                         team: str, probe_team: str, budget: Decimal, since: float, admitted: set[str]) -> None:
    """What must survive a restart: keys, the budget, the ledger, the reports."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
        o = await call(client, gw.base_url, probe_key, chat(max_tokens=2), label=f"probe-after-{kind}")
    report.outcomes.append(o)
    report.checks[f"key_works_after_{kind}"] = o.succeeded
    team_now = await admin.call("GET", f"/v1/admin/teams/{team}")
    report.checks[f"budget_kept_after_{kind}"] = Decimal(str(team_now["budget_usd"])) == budget
    ledger = await settled_ledger(gw.store_url, team, since, set(), timeout_s=0)
    probes = await settled_ledger(gw.store_url, probe_team, since, set(), timeout_s=0)
    report.checks[f"records_kept_after_{kind}"] = admitted <= {r.request_id for r in ledger.records + probes.records}
    total = await admin.report_total_cost(team, since)
    report.checks[f"report_matches_ledger_after_{kind}"] = total == sum((r.cost_usd for r in ledger.records),
                                                                        Decimal(0))


async def gateway_restart(zoo_dir: Path, workdir: Path, per_phase: int = 6, workers: int = 3,
                          budget_requests: int = 20, kinds: tuple[str, ...] = ("kill", "terminate"),
                          settle_grace_s: float = 0.0) -> FaultReport:
    """One gateway on a SQLite file under closed-loop load, with a long stream in flight: killed
    with SIGKILL (and/or stopped with SIGTERM), restarted on the same file and port.

    Rule: the load pauses just before the kill and resumes after the restart, so the only
    requests that can see a connection error are the ones in flight at the kill; those count as
    failed_clean (any other connection error is unclean). A SIGTERM must finish in-flight
    requests (uvicorn's graceful shutdown) and write their records before the process exits.
    `settle_grace_s`: time between pausing the load and the kill (0: requests answered a moment
    before the kill are the ones most at risk of losing their record; see answered_then_killed)."""
    report = FaultReport("gateway_restart")
    began, since = time.monotonic(), time.time()
    db = (workdir / "restart.db").resolve()
    gw = GatewayProcess(gateway_config(zoo_dir, f"sqlite:///{db}"), workdir, "restart")
    admin = Admin(gw.base_url)
    try:
        gw.start().wait_ready()
        probe_key = await admin.open_team("restart-probe")
        budget = budget_for(budget_requests)
        key = await admin.budget_team("restart-load", budget)
        report.outcomes.extend(await warm(gw.base_url, probe_key))
        load = Load(lambda: gw.base_url, key, workers=workers).start()
        long_client = httpx.AsyncClient(timeout=CLIENT_TIMEOUT)
        for phase, kind in enumerate(kinds, start=1):
            await load.until_count(per_phase * phase)
            if settle_grace_s:  # the load stops first, then the long stream starts
                load.gate.clear()
                await asyncio.sleep(settle_grace_s)
            long = LongStream(long_client, gw.base_url, probe_key, max_tokens=150, label=f"long-stream-{kind}")
            report.checks[f"long_stream_mid_stream_at_{kind}"] = await long.streaming()
            load.gate.clear()  # nothing new is sent from here until the restart
            report.kills.append(time.monotonic())
            await asyncio.to_thread(gw.kill if kind == "kill" else gw.terminate)
            report.notes[f"{kind}_s"] = round(time.monotonic() - report.kills[-1], 2)
            in_flight_end = await long.result()
            report.outcomes.append(in_flight_end)
            if kind == "terminate":
                report.checks["terminate_finishes_in_flight_stream"] = in_flight_end.succeeded
            restarted = time.monotonic()
            await asyncio.to_thread(lambda: gw.start().wait_ready())
            report.notes[f"restart_after_{kind}_s"] = round(time.monotonic() - restarted, 2)
            await load.renew()
            admitted = {o.request_id for o in load.outcomes + report.outcomes if o.admitted}
            await _after_restart(report, gw, admin, kind, probe_key, "restart-load", "restart-probe", budget, since,
                                 admitted)
            load.gate.set()
        await load.until_budget_hit(max_requests=per_phase * len(kinds) + budget_requests * 3 + 10)
        report.outcomes += await load.stop()
        await long_client.aclose()
        await account(report, gw.store_url, since, "restart-load", "restart-probe")
        report.notes["in_flight_at_kills"] = sum(1 for o in report.outcomes if o.transport)
        report.notes["restarts"] = len(kinds)
    finally:
        await admin.aclose()
        gw.stop()
    report.seconds = time.monotonic() - began
    return report


async def answered_then_killed(zoo_dir: Path, workdir: Path, answer_wait_s: float = 4.0,
                               recovered_by: str = "restart") -> FaultReport:
    """A request the client saw complete must have its usage record even if the gateway is
    SIGKILLed right after. Made deterministic by holding the SQLite write lock from outside
    (as a busy store would) from mid-stream until after the kill: nothing the gateway writes
    to the store can commit meanwhile. The record must then have been made durable elsewhere
    before the answer (the settlement journal, gateway/store/journal.py): the client sees the
    whole answer while the store is locked, and the gateway restarted on the same file applies
    the journaled record. (With `store.journal_dir: null` the gateway holds the answer back
    until the store commits: the client is then still waiting at the kill, in flight, and no
    record is expected.)
    `recovered_by`: "restart" (the killed gateway is started again on the same file) or "peer" (a
    second gateway on the same file, running all along, takes the dead one's journal over on
    its periodic look, `store.journal_recover_interval_s`, set to 1 s here)."""
    import sqlite3

    report = FaultReport("answered_then_killed")
    began, since = time.monotonic(), time.time()
    db = (workdir / "answered.db").resolve()
    config = gateway_config(zoo_dir, f"sqlite:///{db}", store={"journal_recover_interval_s": 1.0})
    gw = GatewayProcess(config, workdir, "answered")
    peer = GatewayProcess(config, workdir, "answered-peer") if recovered_by == "peer" else None
    lock = None
    try:
        gw.start().wait_ready()
        if peer is not None:
            peer.start().wait_ready()
        admin = Admin(gw.base_url)
        key = await admin.open_team("answered")
        await admin.aclose()
        report.outcomes.extend(await warm(gw.base_url, key))
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            stream = LongStream(client, gw.base_url, key, max_tokens=48, label="answered")
            stream.want = 1
            report.checks["streaming_before_lock"] = await stream.streaming()
            lock = sqlite3.connect(str(db), isolation_level=None, timeout=30)
            lock.execute("BEGIN IMMEDIATE")  # the gateway's next write waits for this
            done, _ = await asyncio.wait({stream.task}, timeout=answer_wait_s)
            report.kills.append(time.monotonic())
            await asyncio.to_thread(gw.kill)
            o = await stream.result()
        report.outcomes.append(o)
        report.notes["client_saw_whole_answer_before_kill"] = bool(done) and o.succeeded
    finally:
        if lock is not None:
            lock.rollback()
            lock.close()
        gw.stop()
    # the killed gateway can write nothing more; the next one on the same file applies what it
    # journaled (a restarted one at start-up, a running peer on its next look)
    survivor = peer if peer is not None else gw
    if peer is None:
        await asyncio.to_thread(lambda: gw.start().wait_ready())
    try:
        await account(report, f"sqlite:///{db}", since, "answered", wait_s=10)
    finally:
        survivor.stop()
    report.seconds = time.monotonic() - began
    return report


# ---- Redis restarted under two gateways ----------------------------------------------------------


async def _ledger_buffers_drained(admins: list[Admin], timeout_s: float = 30.0) -> bool:
    """Wait until no gateway holds usage records for the store (False if `timeout_s` passed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all([await a.metric("muxgate_ledger_pending") == 0 for a in admins]):
            return True
        await asyncio.sleep(0.2)
    return False


async def redis_restart(zoo_dir: Path, workdir: Path, before: int = 8, outage_s: float = 2.5, workers: int = 4,
                        budget_requests: int = 24, gateways: int = 2, how: str = "kill") -> FaultReport:
    """Two gateways on a private redis-server (append-only file, fsync always) under load; Redis
    is killed (SIGKILL; `how="terminate"`: SIGTERM) and restarted on the same port and file.
    While it is down: requests are refused with 503 store_unavailable (fail closed: no key that
    cannot be verified, no budget that cannot be checked), requests already admitted finish and
    their usage records wait in the gateways' LedgerBuffer; after it is back the buffers replay,
    every admitted request has its record, and the budget is not overshot."""
    report = FaultReport("redis_restart")
    began, since = time.monotonic(), time.time()
    redis_server = RedisProcess(workdir / "redis", persistent=True).start()
    url = f"{redis_server.url}?prefix=chaos:"
    procs = [GatewayProcess(gateway_config(zoo_dir, url), workdir, f"redis-gw{i}") for i in range(gateways)]
    admins: list[Admin] = []
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        admins = [Admin(p.base_url) for p in procs]
        probe_key = await admins[0].open_team("redis-probe")
        budget = budget_for(budget_requests)
        key = await admins[0].budget_team("redis-load", budget)
        for p in procs:
            report.outcomes.extend(await warm(p.base_url, probe_key))
        load = Load([(lambda p=p: p.base_url) for p in procs], key, workers=workers).start()
        await load.until_count(before)
        down_at = time.monotonic()  # not a kill of report.kills: no client connection may break
        await asyncio.to_thread(redis_server.kill if how == "kill" else redis_server.stop)
        await asyncio.sleep(outage_s)
        buffered = [await a.metric("muxgate_ledger_buffered_total") for a in admins]
        up_at = time.monotonic()
        await asyncio.to_thread(redis_server.start)
        # Until the gateways have replayed the outage's settlements, those requests' worst-case
        # reservations still hold budget, and refusals for it are right; the run ends on budget
        # refusals counted once the replay is done (else it could end before anything is served
        # after the recovery, depending on the replay's backoff).
        await _ledger_buffers_drained(admins)
        await load.until_budget_hit(max_requests=before + budget_requests * 3 + 20, since=time.monotonic())
        report.outcomes += await load.stop()
        report.checks["ledger_buffers_drained"] = await _ledger_buffers_drained(admins)
        dropped = [await a.metric("muxgate_ledger_dropped_total") for a in admins]
        report.checks["no_record_dropped"] = not any(dropped)
        during = [o for o in report.outcomes if down_at <= o.started and o.ended <= up_at]
        refused = [o for o in during if not o.succeeded]
        report.checks["outage_refused_with_503_store_unavailable"] = bool(refused) and all(
            (o.status == 503 and o.code == "store_unavailable" and o.retry_after) or o.code == "insufficient_quota"
            for o in refused)
        report.checks["served_after_recovery"] = any(o.succeeded and o.started > up_at for o in report.outcomes)
        await account(report, url, since, "redis-load", "redis-probe")
        report.notes["outage_s"] = round(up_at - down_at, 2)
        report.notes["refused_during_outage"] = len(refused)
        report.notes["ledger_buffered"] = int(sum(buffered))
        report.notes["gateways"] = gateways
    finally:
        for a in admins:
            await a.aclose()
        for p in procs:
            p.stop()
        redis_server.stop()
    report.seconds = time.monotonic() - began
    return report
