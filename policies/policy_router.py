"""Deciding which model serves a `model: auto` request under a routing policy, and reloading the
policy when its file changes.

A decision reads, in order: the route for the team; session affinity (an agent's next step stays
on the model its session started on); the route's tier for requests with tools or a response
format, when it names one; the classifier's P(large needed) against the route's
calibrated threshold (or, on a route with `adapt`, the adaptive router of the route's model pair:
the shipped classifier as prior, this deployment's outcomes as evidence, `large_share` held by a
share controller; policies/adaptive.py); then two downgrades to the small tier: the team is near its budget, or
the large tier is saturated (queue depth from the pool), which apply to every choice, a
session's pin and a request kind's tier included. Only models the caller's key may use are
chosen (`RouteContext.allowed`), fallbacks included. Every step names itself in `reason`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from dataclasses import replace
from typing import Protocol

from policies.decision import RouteContext, RoutingDecision
from policies.outcome import Outcome, pair_name
from policies.policy import Policy, PolicyError, RoutePolicy, load_policy
from policies.router import AUTO

log = logging.getLogger("muxgate.policy")
SESSION_TTL_S = 3600.0
MAX_SESSIONS = 100_000


class RouteSignals(Protocol):
    """Live state a policy may look at; the gateway provides it."""

    async def budget_used_fraction(self, team: str) -> float | None: ...

    def queue_depth(self, model: str) -> int: ...


class NoSignals:
    async def budget_used_fraction(self, team: str) -> float | None:
        return None

    def queue_depth(self, model: str) -> int:
        return 0


class PolicyRouter:
    """One loaded policy; immutable apart from the session-affinity table."""

    def __init__(self, policy: Policy, served: set[str], classifier=None, signals: RouteSignals | None = None,
                 sessions: OrderedDict | None = None, adaptive: dict | None = None):
        self.policy = policy
        self.served = served
        self.signals = signals or NoSignals()
        if classifier is None and any(r.strategy == "classifier" for r in policy.routes.values()):
            from policies.classifier import ComplexityClassifier

            classifier = ComplexityClassifier.load(policy.classifier.weights)
        self.classifier = classifier
        self.thresholds = {name: self._threshold(route) for name, route in policy.routes.items()}
        self._sessions: OrderedDict[str, tuple[str, float]] = sessions if sessions is not None else OrderedDict()
        # model pair -> AdaptiveRouter, for the routes with `adapt` (``adaptive``: a previous
        # router's learners, kept across a policy reload where they still fit)
        self.adaptive = self._adaptive_routers(adaptive or {})

    def pair_of(self, route: RoutePolicy) -> str:
        """The route's model pair: its small tier's first model -> its large tier's first model."""
        return pair_name(self.policy.tiers[route.small][0], self.policy.tiers[route.large][0])

    def _adaptive_routers(self, previous: dict) -> dict:
        from policies.adaptive import AdaptiveRouter

        out: dict = {}
        for route in self.policy.routes.values():
            settings = route.adaptation if route.strategy == "classifier" else None
            if settings is None or self.pair_of(route) in out:  # routes of one pair share its learner
                continue
            pair = self.pair_of(route)
            embedder = None
            if settings.embedding:
                from policies.embedding import StaticEmbedder

                embedder = StaticEmbedder.shipped()
            fresh = AdaptiveRouter(self.classifier, pair, route.large_share, embedder=embedder,
                                   explore=settings.explore, window=settings.window)
            old = previous.get(pair)
            if old is not None and old.base is self.classifier and old.dim == fresh.dim and (
                    old.target_large_share, old.knobs) == (fresh.target_large_share, fresh.knobs):
                fresh = old  # same prior, same settings: keep learning where it was
            elif old is not None:
                fresh = self._restored(fresh, old.state())
            out[pair] = fresh
        return out

    def _restored(self, current, state: dict):
        """``state``'s evidence in a learner with ``current``'s prior and settings (a reload that
        changed them, or a state saved by another gateway); ``current`` itself when it does not fit."""
        from policies.adaptive import AdaptiveRouter

        knobs = {**state.get("knobs", {}), "explore": current.knobs.explore, "window": current.knobs.window}
        try:
            return AdaptiveRouter.from_state(self.classifier, {**state, "knobs": knobs,
                                             "target_large_share": current.target_large_share},
                                             embedder=current.embedder)
        except (ValueError, KeyError) as exc:
            log.warning("adaptive router of %s: saved state not used (%s); it starts from the prior", current.pair, exc)
            return current

    # ----- the learning interface: the gateway feeds outcomes and keeps the state in the store

    def observe(self, outcome: Outcome) -> bool:
        """Learn from one outcome; False when no route of this policy adapts on its pair."""
        learner = self.adaptive.get(outcome.pair)
        if learner is None:
            return False
        learner.observe(outcome)
        return True

    def adaptive_state(self) -> dict[str, dict]:
        """pair -> AdaptiveRouter.state() (JSON-serialisable), for the store."""
        return {pair: learner.state() for pair, learner in self.adaptive.items()}

    def load_adaptive_state(self, states: dict[str, dict]) -> None:
        """Restore learners saved by ``adaptive_state`` (by any gateway). Pairs this policy does not
        adapt on are skipped; the policy's current share target and settings win over the saved ones."""
        for pair, state in states.items():
            if pair in self.adaptive:
                self.adaptive[pair] = self._restored(self.adaptive[pair], state)

    def adaptive_status(self) -> dict[str, dict]:
        return {pair: learner.status() for pair, learner in self.adaptive.items()}

    def request_features(self, team: str | None, messages=None, prompt: str | None = None):
        """The features an outcome of this team's request carries: its route's learner's (with the
        embedding when it reads one), else the classifier's."""
        _, route = self.route_for(team)
        learner = self.adaptive.get(self.pair_of(route)) if route.strategy == "classifier" else None
        if learner is not None:
            return learner.features(messages=messages, prompt=prompt)
        return self.classifier.features(messages=messages, prompt=prompt)

    def _threshold(self, route: RoutePolicy) -> float | None:
        if route.strategy != "classifier":
            return None
        if route.threshold is not None:
            return route.threshold
        if route.large_share is not None:
            return self.classifier.threshold_for_large_share(route.large_share)
        if route.quality_target is not None:
            return self.classifier.threshold_for_quality(route.quality_target)
        return 0.5

    def route_for(self, team: str | None) -> tuple[str, RoutePolicy]:
        name = self.policy.teams[team].route if team in self.policy.teams else self.policy.default_route
        return name, self.policy.routes[name]

    async def decide(self, requested: str, context: RouteContext | None = None) -> RoutingDecision | None:
        context = context or RouteContext()
        decision = await self._decide(requested, context)
        if decision is None:
            return None
        _, route = self.route_for(context.team)
        if route.speculative is not None:
            decision = replace(decision, drafts=tuple(route.speculative.drafts.items()),
                               draft_tokens=route.speculative.draft_tokens)
        if route.priority:
            decision = replace(decision, priority=route.priority)
        return decision

    async def _decide(self, requested: str, context: RouteContext) -> RoutingDecision | None:
        if requested != AUTO:
            return RoutingDecision(requested, "explicit") if requested in self.served else None
        name, route = self.route_for(context.team)
        if route.strategy == "fixed":
            model = self._allowed(context, [route.model, *route.fallbacks])
            return None if model is None else RoutingDecision(model, f"route:{name}:fixed", None,
                                                             self._fallbacks(route, model, context))
        score = features = pair = None
        pinned = self._session_model(context.session_id) if route.session_affinity and context.session_id else None
        signal = self._request_kind_tier(route, context)
        if pinned is not None and (context.allowed is None or pinned in context.allowed):
            model, why = pinned, "session_affinity"
        elif signal is not None:
            tier, why = signal
            model = self._in_tier(tier, context)
        elif route.adaptation is not None:
            pair = self.pair_of(route)
            learner = self.adaptive[pair]
            features = learner.features(messages=context.messages, prompt=context.prompt)
            large = learner.use_large(features)
            score = learner.score(features)
            tier, why = (route.large, "adaptive_large") if large else (route.small, "adaptive_small")
            model = self._in_tier(tier, context)
        else:
            # the decision carries the features so the routed request's record does not featurise again
            features = self.classifier.features(messages=context.messages, prompt=context.prompt)
            score = self.classifier.score_features(features)
            tier, why = (route.large, "classifier_large") if score >= self.thresholds[name] else (route.small, "classifier_small")
            model = self._in_tier(tier, context)
        model, why = await self._downgraded(route, model, why, context)
        if model is None:  # nothing in the route's tiers that this key may use: its fallbacks, if any
            model = self._allowed(context, self._fallbacks(route, "", context))
            if model is None:
                return None
        if route.session_affinity and context.session_id:
            self._remember(context.session_id, model)
        return RoutingDecision(model, f"route:{name}:{why}", score, self._fallbacks(route, model, context),
                               pair=pair, features=features)

    async def _downgraded(self, route: RoutePolicy, model: str | None, why: str,
                          context: RouteContext) -> tuple[str | None, str]:
        """The checks every choice passes, however it was made (classifier, the request's kind, a
        session's pin): a large-tier model goes to the small tier when the team is near its
        budget, or when the large model's queue is saturated."""
        large = self.policy.tiers.get(route.large, ())
        if model is None or model not in large or route.small not in self.policy.tiers:
            return model, why
        small = self._in_tier(route.small, context)
        if small is None:
            return model, why
        if route.budget_downgrade_at is not None and context.team:
            used = await self.signals.budget_used_fraction(context.team)
            if used is not None and used >= route.budget_downgrade_at:
                return small, "budget_downgrade"
        if route.capacity.on_saturated == "fallback" and self.signals.queue_depth(model) > route.capacity.max_queue_depth:
            return small, "capacity_downgrade"
        return model, why

    def _in_tier(self, tier: str, context: RouteContext) -> str | None:
        """The tier's first model this key may use."""
        return self._allowed(context, self.policy.tiers.get(tier, ()))

    @staticmethod
    def _allowed(context: RouteContext, models) -> str | None:
        return next((m for m in models if context.allowed is None or m in context.allowed), None)

    @staticmethod
    def _request_kind_tier(route: RoutePolicy, context: RouteContext) -> tuple[str, str] | None:
        """(tier, reason) when the request's kind (an agent's step, structured output) picks the tier."""
        if context.tools and route.tools_tier is not None:
            return route.tools_tier, "tools_tier"
        if context.structured and route.structured_tier is not None:
            return route.structured_tier, "structured_tier"
        return None

    def _fallbacks(self, route: RoutePolicy, chosen: str, context: RouteContext) -> tuple[str, ...]:
        ordered: list[str] = []
        tiers = [t for t in (route.large, route.small) if t in self.policy.tiers]
        candidates = [m for t in tiers for m in self.policy.tiers[t]] + list(route.fallbacks)
        for m in candidates:
            if m != chosen and m not in ordered and m in self.served and self._allowed(context, [m]):
                ordered.append(m)
        return tuple(ordered)

    def _session_model(self, session: str) -> str | None:
        entry = self._sessions.get(session)
        if entry is None or time.monotonic() - entry[1] > SESSION_TTL_S:
            return None
        self._sessions.move_to_end(session)
        return entry[0]

    def _remember(self, session: str, model: str) -> None:
        self._sessions[session] = (model, time.monotonic())
        self._sessions.move_to_end(session)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)


def _weights_stamp(policy: Policy) -> tuple:
    """The classifier weights a policy names: path and the metadata file's mtime (None if absent)."""
    from policies.classifier import WEIGHTS_DIR, WEIGHTS_STEM

    path = Path(policy.classifier.weights) if policy.classifier.weights else WEIGHTS_DIR
    meta = path / f"{WEIGHTS_STEM}.json" if path.is_dir() else path.with_suffix(".json")
    try:
        return str(path.resolve()), meta.stat().st_mtime_ns
    except OSError:
        return str(path.resolve()), None


class ReloadingRouter:
    """Routes with the current policy; a background task reloads the file when it changes. A
    file that fails to load or validate is logged and ignored: the old policy stays in force."""

    def __init__(self, path: str, served: set[str], signals: RouteSignals | None = None, classifier=None):
        self.path = path
        self.served = served
        self.signals = signals
        self._classifier = classifier
        self.reloads = 0
        self.reload_errors = 0
        self.last_error: str | None = None
        self._weights: tuple | None = None
        self.current = self._build()  # a bad file at start-up is an error: nothing to keep
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def _build(self) -> PolicyRouter:
        policy = load_policy(self.path, self.served)
        old = getattr(self, "current", None)
        # the loaded classifier only while the policy names the same, unchanged weights files
        weights = _weights_stamp(policy)
        same = old is None or weights == self._weights
        router = PolicyRouter(policy, self.served, self._classifier if same else None, self.signals,
                              sessions=old._sessions if old is not None else None,
                              adaptive=old.adaptive if old is not None else None)
        self._classifier = router.classifier or self._classifier
        self._weights = weights
        return router

    async def decide(self, requested: str, context: RouteContext | None = None) -> RoutingDecision | None:
        return await self.current.decide(requested, context)

    def check_reload(self) -> bool:
        """Reload if the file changed; True when a new policy took effect."""
        mtime = self._stat()
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            self.current = self._build()
        except (PolicyError, ValueError) as exc:
            self.reload_errors += 1
            self.last_error = str(exc)
            log.error("routing policy reload rejected; keeping the previous policy: %s", exc)
            return False
        self.reloads += 1
        self.last_error = None
        log.warning("routing policy reloaded from %s", self.path)
        return True

    async def watch(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.check_reload()
