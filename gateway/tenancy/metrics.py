"""Prometheus metrics of tenancy, registered on the gateway's own registry (gateway/http/metrics.py
stays the request path's): admission denials by limit, settlement outcomes, spend, and the
ledger buffer's counters, so a store outage that buffers or drops usage records is visible."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.store import LedgerBuffer


class LedgerBufferCollector(Collector):
    """Reads the buffer's plain counters at scrape time."""

    def __init__(self, buffer: LedgerBuffer):
        self.buffer = buffer

    def collect(self):
        b = self.buffer
        for name, value, doc in (
                ("muxgate_ledger_buffered", b.buffered, "Usage records queued because the store was unavailable."),
                ("muxgate_ledger_replayed", b.replayed, "Queued usage records later written to the store."),
                ("muxgate_ledger_dropped", b.dropped, "Usage records given up on in this process (buffer full, "
                 "or rejected by the store); with a journal, a full buffer's are kept there for the next start."),
                ("muxgate_ledger_journal_errors", b.journal_errors,
                 "Usage records that could not be journaled (settled before answering instead)."),
                ("muxgate_ledger_journaled", b.journal.appended if b.journal else 0,
                 "Usage records written to the settlement journal before their answers."),
                ("muxgate_ledger_recovered", b.journal.recovered if b.journal else 0,
                 "Journaled usage records of dead gateways that this gateway took over and applied.")):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        pending = GaugeMetricFamily("muxgate_ledger_pending", "Usage records waiting for the store now.")
        pending.add_metric([], b.pending)
        yield pending
        journal = GaugeMetricFamily("muxgate_ledger_journal_pending",
                                    "Journaled usage records not yet in the store.")
        journal.add_metric([], b.journal.pending if b.journal else 0)
        yield journal


class TenancyMetrics:
    """Counters the admission path updates."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.denials = Counter("muxgate_admission_denials", "Requests refused at admission, by limit.",
                               ["limit"], registry=registry)
        self.settlements = Counter("muxgate_settlements", "Settlements by outcome (settled, buffered, duplicate, "
                                   "failed).", ["outcome"], registry=registry)
        self.cost = Counter("muxgate_cost_usd", "Dollars charged, by team and routed model.", ["team", "model"],
                            registry=registry)
        self.budget_remaining = Gauge("muxgate_budget_remaining_usd", "Dollars left in each team's current budget "
                                      "period (teams with a budget; refreshed every few seconds).", ["team"],
                                      registry=registry)
        self.unverified = Counter("muxgate_admitted_unverified", "Requests admitted without a reservation "
                                  "while the store was unavailable (store.when_unavailable: open).", registry=registry)

    def watch(self, buffer: LedgerBuffer) -> None:
        """Export the ledger buffer's counters."""
        self.registry.register(LedgerBufferCollector(buffer))
