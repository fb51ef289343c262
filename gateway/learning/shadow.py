"""Shadow evaluation (`routing.shadow`): a seeded sample of `auto` requests also runs on the tier
that did not answer, after the client's answer is complete, and a judge scores both answers; the
outcome (source "shadow", both scores) goes to the store and to the router's learner.

Never on a request's latency path: the recorder submits a finished request here, and a few
workers (`max_concurrent`) take them from a bounded queue (`max_queued`; beyond it they are
dropped and counted). Every call it makes (the other tier, a judge model) goes through muxgate's
own backend and admission as the `budget` team's key `muxgate-shadow`: it shows in that team's
reports, and its budget and rate limits stop it (counted as `refused`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, replace

from gateway.http.completions import RequestTrace
from gateway.http.errors import GatewayError
from gateway.learning.judges import pairwise_messages, parse_verdict, rule_scores, verdict_scores
from gateway.learning.routed_record import RoutedNote, observe
from gateway.store import RoutedRequest, Store, StoreError
from gateway.store.entities import principal_for
from policies.decision import RoutingDecision
from policies.outcome import Outcome
from policies.schema import ShadowConfig
from workers.types import GenerationRequest

log = logging.getLogger("muxgate.shadow")

SHADOW_KEY_NAME = "muxgate-shadow"
JUDGE_MAX_TOKENS = 256


def _unit(seed: int, *parts: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the parts (the same on every gateway)."""
    digest = hashlib.blake2b(":".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


@dataclass
class ShadowJob:
    request: RoutedRequest
    note: RoutedNote
    answer: str  # the client's answer (the routed tier's)


class ShadowEvaluator:
    def __init__(self, config: ShadowConfig, backend, admission, store: Store, router):
        self.config = config
        self.backend = backend
        self.admission = admission
        self.store = store
        self.router = router
        self.principal = None  # the budget team's shadow key, resolved at start (with the team's stored share)
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue()
        self._workers: list[asyncio.Task] = []
        self._idle = 0  # workers waiting for a job
        self.counts = {"submitted": 0, "dropped": 0, "refused": 0, "failed": 0, "unjudged": 0, "evaluated": 0}

    @property
    def weight(self) -> float:
        """The budget team's share, as the store had it at start: its place in the replicas' fair queue."""
        return self.principal.share if self.principal is not None else 1.0

    def sampled(self, request_id: str) -> bool:
        return self.config.share > 0 and _unit(self.config.seed, "sample", request_id) < self.config.share

    async def start(self) -> None:
        """Find (or create) the budget team's shadow key and start the workers."""
        team = await self.store.get_team(self.config.budget)
        if team is None:
            log.error("routing.shadow.budget: team %r is not in the store; shadow evaluation is off",
                      self.config.budget)
            return
        now = time.time()
        keys = [k for k in await self.store.list_keys(team.id) if k.name == SHADOW_KEY_NAME and k.is_active(now)]
        key = keys[0] if keys else (await self.store.create_key(team.id, name=SHADOW_KEY_NAME)).key
        self.principal = principal_for(team, key)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.config.max_concurrent)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def submit(self, request: RoutedRequest, note: RoutedNote, answer: str) -> bool:
        """Queue one finished request; False (dropped) when the queue is full or shadowing is off."""
        if self.principal is None or self._queue.qsize() >= self.config.max_queued + self._idle:
            self.counts["dropped"] += 1
            return False
        self.counts["submitted"] += 1
        self._queue.put_nowait(ShadowJob(request, note, answer))
        return True

    async def idle(self) -> None:
        """Wait until every queued evaluation is done (tests, shutdown)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            self._idle += 1
            try:
                job = await self._queue.get()
            finally:
                self._idle -= 1
            try:
                await self.evaluate(job)
            except GatewayError as exc:  # the budget team's budget or rate limit said no
                self.counts["refused"] += 1
                log.info("shadow evaluation of %s refused: %s", job.request.request_id, exc.message)
            except Exception:
                self.counts["failed"] += 1
                log.exception("shadow evaluation of %s failed", job.request.request_id)
            finally:
                self._queue.task_done()

    async def evaluate(self, job: ShadowJob) -> Outcome | None:
        routed = job.request
        base = job.note.request
        # queued in the pool as the budget team's work (its share, no route priority), not the client's:
        # the client's team is not charged for it and must not lose its part of a replica to it
        req = replace(base, request_id=f"{routed.request_id}-shadow", session_id=None, n=1, logprobs=False,
                      top_logprobs=0, draft_model=None, team=self.config.budget, weight=self.weight, priority=0)
        other = await self._generate(job.note.other_model(routed.routed), req, "shadow")
        small, large = (job.answer, other) if routed.routed == "small" else (other, job.answer)
        scores = await self._judge(job, small, large)
        if scores is None:
            self.counts["unjudged"] += 1
            return None
        outcome = Outcome(routed.request_id, routed.team_id, routed.pair, routed.routed, scores[0], scores[1],
                          "shadow", routed.features, time.time())
        try:
            await self.store.record_outcome(outcome)
            if routed.messages is not None:  # the team stores prompts: keep the other tier's answer too
                await self.store.set_other_answer(routed.team_id, routed.request_id, other)
        except StoreError as exc:
            log.warning("shadow outcome of %s not stored: %s", routed.request_id, exc)
        observe(self.router, outcome)
        self.counts["evaluated"] += 1
        return outcome

    async def _judge(self, job: ShadowJob, small: str, large: str) -> tuple[float, float] | None:
        judge = self.config.judge
        if judge.rule is not None:
            return rule_scores(judge, small, large, job.note.request.response_format)
        small_first = _unit(self.config.seed, "order", job.request.request_id) < 0.5
        first, second = (small, large) if small_first else (large, small)
        req = GenerationRequest(request_id=f"{job.request.request_id}-judge",
                                messages=pairwise_messages(job.note.messages, first, second),
                                max_tokens=JUDGE_MAX_TOKENS, temperature=0.0, cache_salt=self.config.budget,
                                team=self.config.budget, weight=self.weight)
        verdict = parse_verdict(await self._generate(judge.model, req, "shadow_judge"))
        return None if verdict is None else verdict_scores(verdict, small_first)

    async def _generate(self, model: str, req: GenerationRequest, reason: str) -> str:
        """One whole answer from the backend, admitted and settled as the budget team's."""
        decision = RoutingDecision(model, reason)
        ticket = await self.admission.admit(self.principal, decision, req)
        trace = RequestTrace(req.request_id, reason, self.principal, model, decision, started=time.perf_counter(),
                             ticket=ticket)
        text: list[str] = []
        stream = self.backend.generate(model, req)
        try:
            async for chunk in stream:
                trace.observe(chunk)
                if chunk.index == 0:
                    text.append(chunk.text)
                if chunk.finish_reason is not None:
                    break
        except BaseException:
            trace.status = "error"
            raise
        finally:
            await stream.aclose()
            trace.finished_at = time.perf_counter()
            pending = self.admission.settle(ticket, trace)
            if pending is not None:
                await pending
        return "".join(text)
