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
    routed_features: object = None  # the RequestFeatures the router decided on, when it hands them over

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
        """The RequestFeatures routing read: the decision's own (an adaptive route hands them over,
        embedding included), else the route's classifier's, computed now (after the answer)."""
        if self.routed_features is not None:
            return self.routed_features
        return self.router.classifier.features(messages=self.request.messages, prompt=self.request.prompt)


class RoutedRecorder:
    """Notes `auto` requests at routing time and records them after their answer (a completion
    hook). Records are written in batches (one store transaction or pipeline every
    ``FLUSH_EVERY_S``), off the request path and cheaper per request than one write each."""

    FLUSH_EVERY_S = 0.05
    MAX_BATCH = 512

    def __init__(self, store: Store, router, store_prompts: frozenset[str], shadow=None):
        self.store = store
        self.router = router
        self.store_prompts = store_prompts
        self.shadow = shadow  # gateway/learning/shadow.ShadowEvaluator or None
        self._batch: list[tuple] = []  # (trace, note, tier) waiting for the next write
        self._batch_written: asyncio.Future | None = None  # resolves once the current batch is written
        self._pending: dict[str, asyncio.Future] = {}  # request id -> its batch's future
        self._writer: asyncio.Task | None = None
        self._flush_now = asyncio.Event()
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
        return RoutedNote(context.team, getattr(decision, "pair", None) or route_pair(router.policy, route),
                          tuple(tiers[route.small]), tuple(tiers[route.large]), messages, request.prompt, request,
                          router, context.team in self.store_prompts, shadow, getattr(decision, "features", None))

    def finished(self, trace) -> None:
        """Completion hook: queue the record for the next batch (the client never waits for it)."""
        note = trace.routed
        if note is None or trace.status != "ok":
            return None
        tier = note.tier(trace.decision.model)
        if tier is None:
            return None
        if self._batch_written is None:
            self._batch_written = asyncio.get_running_loop().create_future()
        self._batch.append((trace, note, tier))
        self._pending[trace.request_id] = self._batch_written
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_batches())
        return None

    async def _write_batches(self) -> None:
        while self._batch:
            try:  # let a batch gather, unless someone waits for one of its requests (feedback)
                await asyncio.wait_for(self._flush_now.wait(), self.FLUSH_EVERY_S)
            except TimeoutError:
                pass
            self._flush_now.clear()
            batch, self._batch = self._batch[:self.MAX_BATCH], self._batch[self.MAX_BATCH:]
            written, self._batch_written = self._batch_written, None
            if self._batch:  # the rest waits for the next batch
                self._batch_written = asyncio.get_running_loop().create_future()
                for trace, _, _ in self._batch:
                    self._pending[trace.request_id] = self._batch_written
            try:
                await self._write(batch)
            finally:
                for trace, _, _ in batch:
                    if self._pending.get(trace.request_id) is written:
                        del self._pending[trace.request_id]
                written.set_result(None)

    async def _write(self, batch: list[tuple]) -> None:
        records = []
        for trace, note, tier in batch:
            started = getattr(trace.ticket, "started_wall", None) or time.time()
            try:
                records.append((RoutedRequest(
                    trace.request_id, note.team, started, note.pair, tier, trace.decision.model,
                    encode_features(note.features()),
                    messages=note.messages if note.store_text else None,
                    answer=trace.answer if note.store_text else None), note, trace.answer))
            except ValueError as exc:
                self.failed += 1
                log.warning("routed request %s not recorded: %s", trace.request_id, exc)
            await asyncio.sleep(0)  # featurising takes a while: requests in flight go first between two
        try:
            await self.store.record_routed_many([r for r, _, _ in records])
        except StoreError as exc:
            self.failed += len(records)
            log.warning("%d routed requests not recorded: %s", len(records), exc)
            return
        self.recorded += len(records)
        for request, note, answer in records:
            if note.shadow and answer is not None:
                self.shadow.submit(request, note, answer)

    async def wait_for(self, request_id: str) -> None:
        """Wait until this process's record of ``request_id`` (if it is being written) is in the store."""
        written = self._pending.get(request_id)
        if written is not None:
            self._flush_now.set()
            await asyncio.shield(written)

    async def drain(self) -> None:
        if self._writer is not None:
            await asyncio.wait([self._writer])
