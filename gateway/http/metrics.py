"""Prometheus metrics of one gateway process (its own registry, so apps in one process don't clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("muxgate_requests", "Requests by endpoint, routed model, route reason and status.",
                                ["endpoint", "model", "route", "status"], registry=r)
        self.latency = Histogram("muxgate_request_latency_seconds", "Time from request to last byte.",
                                 ["model", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("muxgate_ttft_seconds", "Time from request to first token.",
                              ["model", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("muxgate_tokens", "Tokens processed, by model and kind (prompt/completion).",
                              ["model", "kind"], registry=r)
        self.in_flight = Gauge("muxgate_requests_in_flight", "Requests being served now.", registry=r)
        self.errors = Counter("muxgate_errors", "Error responses by status and code.", ["status", "code"], registry=r)

        self._children: dict[tuple, tuple] = {}  # label values -> the metric children they select

    def request_finished(self, endpoint: str, model: str, route: str, status: str, latency_s: float,
                         ttft_s: float | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one finished request. The labelled children are looked up once per label set:
        `labels()` takes a lock and validates every time, a dict lookup does not."""
        key = (endpoint, model, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, model, route, status), self.latency.labels(model, route),
                self.ttft.labels(model, route), self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"))
        requests, latency, ttft, prompt, completion = children
        requests.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        prompt.inc(prompt_tokens)
        completion.inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
