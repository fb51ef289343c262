"""The chaos bench's ledger side: the admin API, the store's raw ledger and budget position, and
FaultReport, which matches admitted requests to ledger records and renders a fault's JSON."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal

import httpx

from loadtests.chaos_client import Outcome, tally
from loadtests.chaos_kit import ADMIN_KEY


# ---- admin API, ledger and budget ---------------------------------------------------------------


class Admin:
    """The admin API of one gateway (async)."""

    def __init__(self, base_url: str, key: str = ADMIN_KEY):
        self.http = httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30)

    async def call(self, method: str, path: str, **kw) -> dict:
        resp = await self.http.request(method, path, **kw)
        if resp.status_code != 200:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    async def team(self, team_id: str, **limits) -> dict:
        return await self.call("POST", "/v1/admin/teams", json={"id": team_id, "name": team_id, **limits})

    async def key(self, team_id: str, **fields) -> str:
        return (await self.call("POST", "/v1/admin/keys", json={"team": team_id, **fields}))["secret"]

    async def budget_team(self, team_id: str, budget: Decimal) -> str:
        """A team whose `total` budget the run is meant to hit; returns a key of it."""
        await self.team(team_id, budget_usd=str(budget), budget_period="total")
        return await self.key(team_id)

    async def open_team(self, team_id: str) -> str:
        await self.team(team_id)
        return await self.key(team_id)

    async def report_total_cost(self, team_id: str, since: float) -> Decimal:
        report = await self.call("GET", "/v1/reports/usage", params={
            "team": team_id, "from": str(int(since) - 3600), "to": str(int(time.time()) + 3600), "group_by": "team"})
        return Decimal(str(report["totals"]["cost_usd"]))

    async def metric(self, name: str) -> float:
        resp = await self.http.get("/metrics")  # with the admin key: it carries every team's spend
        for line in resp.text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    async def aclose(self) -> None:
        await self.http.aclose()


@dataclass
class Ledger:
    records: list
    spent: Decimal
    reserved: Decimal
    budget: Decimal | None


async def read_ledger(store_url: str, team_id: str, since: float) -> Ledger:
    """The team's raw ledger and budget position, read from the store itself."""
    from gateway.store import open_store

    store = open_store(store_url)
    try:
        records = await store.usage_records(since - 3600, time.time() + 3600, team_id=team_id, limit=100_000)
        spend = await store.spend(team_id)
    finally:
        await store.close()
    return Ledger(records, spend.spent_usd, spend.reserved_usd, spend.budget_usd)


async def settled_ledger(store_url: str, team_id: str, since: float, expected_ids: set[str],
                         timeout_s: float = 15.0) -> Ledger:
    """The ledger once every expected record is there (or `timeout_s` passed: what is there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ledger = await read_ledger(store_url, team_id, since)
        except Exception:  # the store may still be coming back
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
            continue
        found = {r.request_id for r in ledger.records}
        if expected_ids <= found or time.monotonic() > deadline:
            return ledger
        await asyncio.sleep(0.2)


@dataclass
class FaultReport:
    """One fault's line of the bench's JSON, plus the checks the tests assert."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    records_expected: int = 0
    records_found: int = 0
    records_extra: int = 0
    records_duplicate: int = 0
    budget_usd: Decimal | None = None
    spent_usd: Decimal = Decimal(0)
    seconds: float = 0.0

    def account(self, ledger: Ledger, admitted_ids: set[str] | None = None) -> None:
        ids = admitted_ids if admitted_ids is not None else {o.request_id for o in self.outcomes if o.admitted}
        seen = [r.request_id for r in ledger.records]
        self.records_expected = len(ids)
        self.records_found = len(ids & set(seen))
        self.records_extra = len(set(seen) - ids)
        self.records_duplicate = len(seen) - len(set(seen))
        missing = ids - set(seen)
        for o in self.outcomes:
            if o.request_id in missing and len(self.notes.setdefault("records_missing", [])) < 5:
                after = [round(k - o.ended, 3) for k in self.kills if k >= o.ended]
                self.notes["records_missing"].append(
                    {"label": o.label, "status": o.status, "code": o.code, "stream": o.stream,
                     "ended_s_before_next_kill": after[0] if after else None})
        self.budget_usd, self.spent_usd = ledger.budget, ledger.spent
        self.checks["ledger_sum_equals_spend"] = sum((r.cost_usd for r in ledger.records), Decimal(0)) == ledger.spent

    def absorb(self, other: "FaultReport", check: str) -> None:
        """Add another run's requests and records to this fault (one more phase of it); `check`
        records whether that run survived."""
        self.outcomes += other.outcomes
        self.kills += other.kills
        self.records_expected += other.records_expected
        self.records_found += other.records_found
        self.records_extra += other.records_extra
        self.records_duplicate += other.records_duplicate
        self.checks[check] = not other.failures()
        self.notes[check] = {k: v for k, v in other.notes.items() if k != "records_missing"}
        if other.notes.get("records_missing"):
            self.notes.setdefault("records_missing", []).extend(other.notes["records_missing"])
        self.seconds += other.seconds

    @property
    def budget_overshoot(self) -> float:
        if self.budget_usd is None:
            return 0.0
        return float(max(Decimal(0), self.spent_usd - self.budget_usd))

    def as_json(self) -> dict:
        counts = tally(self.outcomes, self.kills)
        return {
            "sent": counts["sent"], "succeeded": counts["succeeded"], "failed_clean": counts["failed_clean"],
            "unclean": counts["unclean"], "records_expected": self.records_expected,
            "records_found": self.records_found, "budget_overshoot": self.budget_overshoot,
            "records_extra": self.records_extra, "records_duplicate": self.records_duplicate,
            "budget_usd": None if self.budget_usd is None else float(self.budget_usd),
            "spent_usd": float(self.spent_usd), "budget_hit": any(o.code == "insufficient_quota" for o in self.outcomes),
            "checks": self.checks, "unclean_examples": counts["unclean_examples"], **self.notes,
            "seconds": round(self.seconds, 1),
        }

    def failures(self) -> list[str]:
        """Everything wrong, for an assertion message (empty: the fault was survived)."""
        out = [f"{k} failed" for k, v in self.checks.items() if v is not True]
        summary = self.as_json()
        if summary["unclean"]:
            out.append(f"{summary['unclean']} unclean: {summary['unclean_examples']}")
        if self.records_found != self.records_expected:
            out.append(f"records: {self.records_found} of {self.records_expected} found; missing: "
                       f"{self.notes.get('records_missing')}")
        if self.records_duplicate:
            out.append(f"{self.records_duplicate} duplicate records")
        if self.budget_overshoot:
            out.append(f"budget overshot by ${self.budget_overshoot}")
        return out
