"""What routing learns from, kept per `auto` request: at routing time a note (the route's model
pair and tiers, the request's messages, whether its answer text is needed); after the answer, in
the background, its features and the tier that answered are written to the store beside its
usage record (gateway/store/outcomes.RoutedRequest). The messages and answers are stored only for
teams with `store_prompts: true`; otherwise they live in memory until the request's shadow
evaluation (if sampled) is done.

Nothing here runs before the client's answer except building the note (no featurising, no store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from policies.outcome import Outcome, encode_features, pair_name
from policies.router import AUTO
from gateway.store import RoutedRequest, Store, StoreError

log = logging.getLogger("muxgate.learning")


def policy_router_of(router):
    """The PolicyRouter behind the gateway's router (a ReloadingRouter's current one), or None
    when routing has no policy (then there is nothing to learn)."""
    current = getattr(router, "current", router)
    return current if hasattr(current, "route_for") and hasattr(current, "policy") else None


def route_pair(policy, route) -> str:
    """The route's model pair: its small tier's first model -> its large tier's first model."""
    return pair_name(policy.tiers[route.small][0], policy.tiers[route.large][0])


def observe(router, outcome: Outcome) -> None:
    """Feed one outcome to the router's learner, when the current policy has one."""
    learner = getattr(policy_router_of(router), "observe", None)
    if learner is None:
        return
    try:
        learner(outcome)
    except Exception:  # a label the router cannot use must not fail the caller
        log.exception("the router could not learn from outcome %s", outcome.request_id)


@dataclass
class RoutedNote:
    """Taken at routing time; read when the request settles."""

    team: str
    pair: str
    small: tuple[str, ...]
    large: tuple[str, ...]
    messages: list[dict]
    prompt: str | None
    request: object  # the GenerationRequest (a shadow evaluation reruns it on the other tier)
    router: object  # the PolicyRouter that decided (its classifier featurises the request)
    store_text: bool  # the team stores prompts
    shadow: bool  # sampled for shadow evaluation

    @property
    def keep_answer(self) -> bool:
        return self.store_text or self.shadow

    def tier(self, model: str) -> str | None:
        """The tier ``model`` belongs to in this route; None for a model outside both (a fallback)."""
        if model in self.large:
            return "large"
        return "small" if model in self.small else None

    def other_model(self, tier: str) -> str:
        return (self.small if tier == "large" else self.large)[0]

    def features(self):
        """The RequestFeatures routing reads (the router's own features when it offers them)."""
        own = getattr(self.router, "request_features", None)
        if own is not None:
            return own(self.team, messages=self.request.messages, prompt=self.request.prompt)
        return self.router.classifier.features(messages=self.request.messages, prompt=self.request.prompt)


class RoutedRecorder:
    """Notes `auto` requests at routing time and records them after their answer (a completion hook)."""

    def __init__(self, store: Store, router, store_prompts: frozenset[str], shadow=None):
        self.store = store
        self.router = router
        self.store_prompts = store_prompts
        self.shadow = shadow  # gateway/shadow.ShadowEvaluator or None
        self._pending: dict[str, asyncio.Task] = {}
        self.recorded = 0
        self.failed = 0

    def note(self, requested: str, decision, context, request) -> RoutedNote | None:
        if requested != AUTO or decision.score is None:  # only the classifier's decisions teach it
            return None
        router = policy_router_of(self.router)
        if router is None:
            return None
        _, route = router.route_for(context.team)
        if route.strategy != "classifier":
            return None
        tiers = router.policy.tiers
        messages = request.messages if request.messages is not None else [{"role": "user", "content": request.prompt}]
        shadow = self.shadow is not None and self.shadow.sampled(request.request_id)
        return RoutedNote(context.team, route_pair(router.policy, route), tuple(tiers[route.small]),
                          tuple(tiers[route.large]), messages, request.prompt, request, router,
                          context.team in self.store_prompts, shadow)

    def finished(self, trace) -> None:
        """Completion hook: record in the background (the client is never kept waiting for it)."""
        note = trace.routed
        if note is None or trace.status != "ok":
            return None
        tier = note.tier(trace.decision.model)
        if tier is None:
            return None
        task = asyncio.ensure_future(self._record(trace, note, tier))
        self._pending[trace.request_id] = task
        task.add_done_callback(lambda _: self._pending.pop(trace.request_id, None))
        return None

    async def _record(self, trace, note: RoutedNote, tier: str) -> None:
        started = getattr(trace.ticket, "started_wall", None) or time.time()
        try:
            request = RoutedRequest(
                trace.request_id, note.team, started, note.pair, tier, trace.decision.model,
                encode_features(note.features()),
                messages=note.messages if note.store_text else None,
                answer=trace.answer if note.store_text else None)
            await self.store.record_routed(request)
        except (StoreError, ValueError) as exc:
            self.failed += 1
            log.warning("routed request %s not recorded: %s", trace.request_id, exc)
            return
        self.recorded += 1
        if note.shadow and trace.answer is not None:
            self.shadow.submit(request, note, trace.answer)

    async def wait_for(self, request_id: str) -> None:
        """Wait until this process's record of ``request_id`` (if it is being written) is in the store."""
        task = self._pending.get(request_id)
        if task is not None:
            await asyncio.wait([task])

    async def drain(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending.values()))
