"""Chaos bench: inject each fault in turn under light load and check that clients fail cleanly,
that nothing is lost from the usage ledger and that no budget is overshot. Prints one JSON line:

  {"faults": {NAME: {"sent", "succeeded", "failed_clean", "unclean", "records_expected",
                     "records_found", "budget_overshoot", ...checks and notes}}, "ok": bool, ...}

Faults: model_load_fails and bad_input (one SQLite gateway), gateway_restart (SIGKILL and SIGTERM
of a gateway on a SQLite file under load, then a request answered just before a SIGKILL while the
store is busy), redis_restart (redis-server killed under two gateways),
replica_killed (a real local Ray Serve pool: its replica actor killed mid-stream). The rules that
sort outcomes (succeeded / failed_clean / unclean) and match ledger records are in
loadtests/chaos_client.py. Every fault's team has a budget the run is meant to hit; budget_overshoot
is max(0, settled spend - budget).

Usage: python -m loadtests.chaos --json [--only NAME ...] [--zoo var/zoo] [--no-ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loadtests.chaos_faults import sqlite_faults
from loadtests.chaos_kit import ensure_zoo
from loadtests.chaos_ledger import FaultReport
from loadtests.chaos_restarts import answered_then_killed, gateway_restart, redis_restart

FAULTS = ("model_load_fails", "bad_input", "gateway_restart", "redis_restart", "replica_killed")


async def run(names: list[str], zoo_dir: Path, workdir: Path) -> dict[str, FaultReport]:
    reports: dict[str, FaultReport] = {}

    def log(report: FaultReport) -> None:
        reports[report.name] = report
        summary = report.as_json()
        print(f"[chaos] {report.name}: {summary['succeeded']}/{summary['sent']} succeeded, "
              f"{summary['failed_clean']} failed cleanly, {summary['unclean']} unclean, records "
              f"{summary['records_found']}/{summary['records_expected']}, {report.seconds:.0f}s"
              + (f"; problems: {report.failures()}" if report.failures() else ""), file=sys.stderr, flush=True)

    if {"model_load_fails", "bad_input"} & set(names):
        for report in await sqlite_faults(zoo_dir, workdir / "sqlite"):
            if report.name in names:
                log(report)
    if "gateway_restart" in names:
        report = await gateway_restart(zoo_dir, workdir / "restart")
        # one more phase: a request answered just before a SIGKILL, while the store is busy
        report.absorb(await answered_then_killed(zoo_dir, workdir / "answered"), "answered_just_before_kill_recorded")
        log(report)
    if "redis_restart" in names:
        log(await redis_restart(zoo_dir, workdir / "redis"))
    if "replica_killed" in names:
        from loadtests.chaos_ray import replica_killed

        log(await replica_killed(zoo_dir, workdir / "ray"))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the one JSON line (always printed)")
    parser.add_argument("--only", nargs="+", choices=FAULTS, help="run only these faults")
    parser.add_argument("--no-ray", action="store_true", help="skip replica_killed (no local Ray)")
    parser.add_argument("--zoo", default="var/zoo", help="demo zoo directory (mux-2m and mux-5m are built if missing)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = list(args.only or FAULTS)
    if args.no_ray and "replica_killed" in names:
        names.remove("replica_killed")
    if "redis_restart" in names and not shutil.which("redis-server") and not os.path.exists("/usr/bin/redis-server"):
        print("[chaos] no redis-server binary: skipping redis_restart", file=sys.stderr)
        names.remove("redis_restart")
    zoo_dir = ensure_zoo(Path(args.zoo))
    workdir = Path(tempfile.mkdtemp(prefix="muxgate-chaos-"))
    began = time.monotonic()
    try:
        reports = asyncio.run(run(names, zoo_dir, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"[chaos] work directory kept: {workdir}", file=sys.stderr)
    faults = {name: reports[name].as_json() for name in names if name in reports}
    ok = all(not reports[n].failures() for n in faults)
    print(json.dumps({"faults": faults, "ok": ok, "seconds": round(time.monotonic() - began, 1),
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                      "rules": "see loadtests/chaos_client.py"}, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
