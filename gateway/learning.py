"""Routing that learns from the deployment, wired together for one gateway process: the recorder
of routed requests, feedback, shadow evaluation and the router's persisted state. Built by
gateway/app.py when there is a store and a routing policy (without a policy nothing is learnt)."""

from __future__ import annotations

import logging

from gateway.feedback import FeedbackService
from gateway.routed_record import RoutedRecorder
from gateway.router_state import RouterStateSync
from gateway.shadow import ShadowEvaluator
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
