"""Admission against the store: reserve the worst case before dispatch, settle the actual cost
after the request ends (completed, failed or abandoned), one usage record per admitted request.

Implements the Admission seam of gateway/http/completions.py. The reservation is one atomic store
operation (team and key budgets, RPM and TPM together, across every gateway sharing the store);
settlement goes through the LedgerBuffer so a briefly unavailable store loses no record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from gateway.tenancy.costs import CostModel, WorstCase
from gateway.http.errors import Forbidden, RateLimited, Unauthorized
from gateway.tenancy.estimate import prompt_token_bound, prompt_token_estimate
from gateway.store import Denial, LedgerBuffer, Principal, Reservation, Store, UsageRecord
from gateway.store import errors as store_errors
from gateway.store.records import (
    KEY_BUDGET,
    KEY_REVOKED,
    MODEL_NOT_ALLOWED,
    TEAM_BUDGET,
)
from gateway.tenancy.errors import BudgetExceeded, StoreDown, mapped_store_errors
from gateway.tenancy.metrics import TenancyMetrics
from policies.decision import RoutingDecision
from workers.types import GenerationRequest

log = logging.getLogger("muxgate.admission")


@dataclass(frozen=True)
class Ticket:
    """What admission hands the request path: the reservation and when the request began."""

    reservation: Reservation
    worst: WorstCase
    started_wall: float  # epoch seconds of the request's arrival (the ledger's time)
    prompt_bound: int = 0  # what the prompt can at most take (estimate.prompt_token_bound)
    completion_tokens: int = 0  # what the completions can at most take: max_tokens x n


def denial_error(denial: Denial, worst: WorstCase | None, model: str):
    """The client-facing error of a refused reservation; the message names the limit."""
    headers = {"x-muxgate-limit": denial.limit}
    if denial.limit in (TEAM_BUDGET, KEY_BUDGET):
        cost = f"; this request could cost up to ${worst.cost_usd}" if worst else ""
        return BudgetExceeded(f"Budget exceeded ({denial.limit}): {denial.detail}{cost}.",
                              retry_after=denial.retry_after_s, headers=headers)
    if denial.limit == MODEL_NOT_ALLOWED:
        return Forbidden(f"Model not allowed ({denial.limit}): {denial.detail} '{model}'.", param="model",
                         code="model_not_allowed", headers=headers)
    if denial.limit == KEY_REVOKED:
        return Unauthorized(f"Key rejected ({denial.limit}): {denial.detail}.", headers=headers)
    never = " (this request alone exceeds it)" if denial.retry_after_s is None else ""
    tokens = f"; up to {worst.tokens} tokens were requested" if worst else ""
    return RateLimited(f"Rate limit reached ({denial.limit}): {denial.detail}{never}{tokens}.",
                       retry_after=denial.retry_after_s, headers=headers)


class StoreAdmission:
    """Budgets and rate limits from the store; the usage ledger written at settlement."""

    def __init__(self, store: Store, buffer: LedgerBuffer, costs: CostModel,
                 context_length: Callable[[str], Awaitable[int | None]], metrics: TenancyMetrics,
                 fail_open: bool = False):
        self.store = store
        self.buffer = buffer
        self.costs = costs
        self.context_length = context_length
        self.metrics = metrics
        self.fail_open = fail_open
        self._periods: dict[str, tuple[str, str]] = {}  # key id -> budget periods of its last reservation
        self._running: dict[str, Ticket] = {}  # request id -> ticket, admitted and not settled yet
        # (outcome, team, model) -> the metric children a settlement counts in, looked up once
        # (prometheus keeps a child per label set for the life of the process either way)
        self._settled: dict[tuple, tuple] = {}

    async def admit(self, principal: Principal, decision: RoutingDecision, req: GenerationRequest) -> Ticket:
        """Reserve the worst case of ``req`` on the routed model (and any fallback), or refuse."""
        # settlements this process has answered but not yet applied count first, as they would
        # had they been written before their answers
        await self.buffer.caught_up()
        candidates = [decision.model, *decision.fallbacks]
        for model in candidates:
            # The store checks the routed model atomically; fallbacks are checked here, since a
            # fallback the key may not use must not be reachable through routing either.
            if not principal.allows_model(model):
                self.metrics.denials.labels(MODEL_NOT_ALLOWED).inc()
                raise denial_error(Denial.of(MODEL_NOT_ALLOWED), None, model)
        contexts = {m: await self.context_length(m) for m in candidates}
        bound = prompt_token_bound(req)
        worst = self.costs.worst_case_any(candidates, bound, req.max_tokens, contexts.get, req.n)
        completion = (req.max_tokens or 0) * max(1, req.n)
        # Budgets hold the worst case (a bound: money never overshoots); TPM takes a typical
        # estimate and `confirm` takes the rest once the model has counted the prompt.
        tpm_tokens = min(worst.tokens, prompt_token_estimate(req) + completion)
        started_wall = time.time()
        try:
            with mapped_store_errors():
                try:
                    result = await self.store.reserve(principal, decision.model, worst.cost_usd, tpm_tokens,
                                                      request_id=req.request_id)
                except store_errors.NotFound:  # the key or team was deleted after the cached lookup
                    raise Unauthorized("The API key or its team no longer exists.") from None
        except StoreDown:
            if not self.fail_open or principal.key_id not in self._periods:
                raise
            return self._unverified_ticket(principal, decision, req, worst, started_wall)
        if isinstance(result, Denial):
            self.metrics.denials.labels(result.limit).inc()
            raise denial_error(result, worst, decision.model)
        self._periods[result.key_id] = (result.team_period, result.key_period)
        ticket = Ticket(result, worst, started_wall, bound, completion)
        self._running[result.id] = ticket
        return ticket

    async def confirm(self, trace, prompt_tokens: int) -> None:
        """The model has counted the prompt (its first chunk): take what TPM still lacks for
        the real count plus the completions' bound, or refuse the request (429) before any of
        its answer is sent; refused, its whole reservation goes back to the limit at once. A
        prompt not counted yet (0: an upstream reports usage at the end) is taken at its bound.
        So TPM never admits more than its limit, and refuses only what would exceed it once
        counted. Updates ``trace.ticket``."""
        ticket: Ticket | None = trace.ticket
        if ticket is None or not ticket.reservation.tpm_limited:
            return
        needed = min(ticket.worst.tokens, (prompt_tokens or ticket.prompt_bound) + ticket.completion_tokens)
        extra = needed - ticket.reservation.tokens
        if extra <= 0:
            return
        try:
            with mapped_store_errors():
                result = await self.store.take_tokens(ticket.reservation, extra)
        except StoreDown:
            if self.fail_open:
                return
            raise
        if isinstance(result, Denial):
            trace.ticket = replace(ticket, reservation=replace(ticket.reservation, tokens=0))
            self.metrics.denials.labels(result.limit).inc()
            raise denial_error(result, replace(ticket.worst, tokens=needed), ticket.reservation.model)
        trace.ticket = replace(ticket, reservation=result)
        if result.id in self._running:
            self._running[result.id] = trace.ticket

    async def watch_reservations(self) -> None:
        """Renew the reservations of requests still running, every third of their ttl, so a
        generation longer than the ttl keeps what it holds (budget and TPM) until it settles."""
        ttl = float(getattr(self.store, "reservation_ttl_s", 600.0))
        while True:
            await asyncio.sleep(ttl / 3)
            await self.renew_running(older_than_s=ttl / 3)

    async def renew_running(self, older_than_s: float = 0.0) -> int:
        """One renewal of every running request's reservation made more than `older_than_s` ago."""
        now = time.time()
        due = [t.reservation for t in self._running.values() if now - t.started_wall >= older_than_s]
        if not due:
            return 0
        try:
            return await self.store.renew(due)
        except Exception as exc:  # the store may be down: the next round tries again
            log.warning("could not renew %d reservations: %s", len(due), exc)
            return 0

    def _unverified_ticket(self, principal: Principal, decision: RoutingDecision, req: GenerationRequest,
                           worst: WorstCase, started_wall: float) -> Ticket:
        """Failing open: admit without a reservation. The ledger buffer settles it into the
        periods of the key's last reservation once the store is back, so usage is still recorded."""
        team_period, key_period = self._periods[principal.key_id]
        self.metrics.unverified.inc()
        log.warning("store unavailable; admitting %s without a reservation (fail open)", req.request_id)
        reservation = Reservation(id=req.request_id, team_id=principal.team_id, key_id=principal.key_id,
                                  model=decision.model, cost_usd=worst.cost_usd, tokens=worst.tokens,
                                  created_at=started_wall, expires_at=started_wall, team_period=team_period,
                                  key_period=key_period)
        return Ticket(reservation, worst, started_wall, prompt_token_bound(req), (req.max_tokens or 0) * max(1, req.n))

    def settle(self, ticket: Ticket | None, trace) -> Awaitable[None] | None:
        """Charge the actual cost (never above the reservation) and write the usage record.

        With a journal the record is durable once this returns (None) and reaches the store in
        the background; otherwise the returned awaitable writes it to the store (or the buffer's
        queue) and must be awaited before the client is answered."""
        if ticket is None:
            return None
        self._running.pop(ticket.reservation.id, None)
        record = usage_record(ticket, trace, self.costs)
        if self.buffer.record(ticket.reservation, record, lambda outcome: self._count(outcome, record)):
            return None
        return self._settle_now(ticket.reservation, record)

    async def _settle_now(self, reservation: Reservation, record: UsageRecord) -> None:
        try:
            outcome = await self.buffer.settle(reservation, record)
        except Exception as exc:
            outcome = exc
        self._count(outcome, record)

    def _count(self, outcome, record: UsageRecord) -> None:
        if isinstance(outcome, BaseException):
            self.metrics.settlements.labels("failed").inc()
            log.error("could not settle request %s", record.request_id, exc_info=outcome)
            return
        key = (outcome, record.team_id, record.routed_model)
        children = self._settled.get(key)
        if children is None:
            children = self._settled[key] = (
                self.metrics.settlements.labels({True: "settled", False: "duplicate", None: "buffered"}[outcome]),
                self.metrics.cost.labels(record.team_id, record.routed_model))
        children[0].inc()
        children[1].inc(float(record.cost_usd))


def usage_record(ticket: Ticket, trace, costs: CostModel) -> UsageRecord:
    """The ledger entry of a finished request (a completions.RequestTrace)."""
    reservation = ticket.reservation
    model = trace.decision.model
    p, c, gpu = trace.prompt_tokens, trace.completion_tokens, trace.gpu_seconds
    cost = min(costs.cost(model, p, c, gpu), reservation.cost_usd)
    finished = trace.finished_at if trace.finished_at is not None else time.perf_counter()
    return UsageRecord(
        request_id=reservation.id,
        time=ticket.started_wall,
        team_id=reservation.team_id,
        key_id=reservation.key_id,
        requested_model=trace.requested_model,
        routed_model=model,
        route_reason=trace.decision.reason,
        route_score=trace.decision.score,
        prompt_tokens=p,
        completion_tokens=c,
        cost_usd=cost,
        baseline_cost_usd=costs.baseline_cost(model, p, c, gpu),
        gpu_seconds=gpu,
        latency_ms=round((finished - trace.started) * 1000, 3),
        ttft_ms=None if trace.first_token_at is None else round((trace.first_token_at - trace.started) * 1000, 3),
        status=trace.status,
        tool_calls=trace.tool_calls,
        constrained=trace.constrained,
    )
