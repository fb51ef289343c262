"""Routing that learns from the deployment, wired together for one gateway process: the recorder
of routed requests, feedback, shadow evaluation and the router's persisted state. Built by
gateway/http/app.py when there is a store and a routing policy (without a policy nothing is learnt)."""

from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily

from gateway.learning.feedback import FeedbackService
from gateway.learning.routed_record import RoutedRecorder
from gateway.learning.router_state import RouterStateSync
from gateway.learning.shadow import ShadowEvaluator
from gateway.store import StoreError

log = logging.getLogger("muxgate.learning")


class Learning:
    def __init__(self, config, backend, tenancy, router):
        store = tenancy.store
        shadow = config.routing.shadow
        self.shadow = (ShadowEvaluator(shadow, backend, tenancy.admission, store, router)
                       if shadow is not None and shadow.share > 0 else None)
        self.recorder = RoutedRecorder(store, router, frozenset(t.id for t in config.teams if t.store_prompts),
                                       self.shadow)
        self.state = RouterStateSync(store, router, config.store.router_state_save_s)
        self.feedback = FeedbackService(store, router, self.recorder, tenancy.authenticator,
                                        config.server.body_read_timeout_s)

    async def start(self) -> None:
        try:
            await self.state.load()
        except StoreError as exc:
            log.warning("the router's stored state could not be read; starting from the prior: %s", exc)
        if self.shadow is not None:
            await self.shadow.start()

    async def close(self) -> None:
        """At shutdown, before the store closes: finish recording, stop shadowing, save the state."""
        await self.recorder.drain()
        if self.shadow is not None:
            await self.shadow.close()
        try:
            await self.state.save()
        except StoreError as exc:
            log.warning("the router's state could not be saved at shutdown: %s", exc)


class LearningCollector:
    """The learning parts' plain counters as Prometheus metrics, read at scrape time."""

    def __init__(self, learning: Learning):
        self.learning = learning

    def collect(self):
        recorded = CounterMetricFamily("muxgate_routed_requests", "Auto requests recorded for the router to learn "
                                       "from (features, tier), by outcome (recorded, failed).", labels=["outcome"])
        recorded.add_metric(["recorded"], self.learning.recorder.recorded)
        recorded.add_metric(["failed"], self.learning.recorder.failed)
        yield recorded
        feedback = CounterMetricFamily("muxgate_feedback", "Feedback scores accepted by POST /v1/feedback.")
        feedback.add_metric([], self.learning.feedback.accepted)
        yield feedback
        shadow = CounterMetricFamily("muxgate_shadow_evaluations", "Shadow evaluations by outcome: submitted, dropped "
                                     "(queue full), refused (the budget team's limits), failed, unjudged (no verdict), "
                                     "evaluated.", labels=["outcome"])
        for outcome, value in (self.learning.shadow.counts if self.learning.shadow else {}).items():
            shadow.add_metric([outcome], value)
        yield shadow
