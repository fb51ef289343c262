"""`muxgate router status` and `muxgate router fit --from-store`: the learned router state read
from the store, and an offline refit of it from every stored outcome.

Both build the routing policy's routers the way the gateway does (the policy file, its
classifier weights) and read or write the state document the gateways share
(gateway/learning/router_state.py). A refit is written to the store with a new `fitted_at`, which running
gateways load at their next save tick; with ``out`` it is written instead as a weights directory
(the classifier's files and `adaptive_state.json`) for a policy's `classifier.weights` to name.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.config import ConfigError, MuxgateConfig
from gateway.learning.routed_record import route_pair
from gateway.learning.router_state import FITTED_STATE_FILE, state_document
from gateway.store import Store


def _policy_router(config: MuxgateConfig):
    if not config.routing.policy_file:
        raise ConfigError("routing.policy_file is not set: without a routing policy there is no router to learn")
    from policies.policy import load_policy
    from policies.policy_router import PolicyRouter

    served = {m.name for m in config.models}
    return PolicyRouter(load_policy(config.routing.policy_file, served), served)


def _pairs(router) -> dict[str, float | None]:
    """The policy's classifier routes' pairs and their large_share targets."""
    return {route_pair(router.policy, r): r.large_share
            for r in router.policy.routes.values() if r.strategy == "classifier"}


def _embedder(template: dict | None):
    if not template or not template.get("n_embedding"):
        return None
    from policies.embedding import StaticEmbedder

    return StaticEmbedder.shipped()


def _restore(router, state: dict):
    from policies.adaptive import AdaptiveRouter

    return AdaptiveRouter.from_state(router.classifier, state, embedder=_embedder(state))


async def router_status(store: Store, config: MuxgateConfig) -> dict:
    """Per pair: labels seen, the rolling large share, estimated APGR with its 95% interval."""
    router = _policy_router(config)
    saved = await store.load_router_state()
    document, saved_at = saved if saved is not None else ({"adaptive": {}}, None)
    states = document.get("adaptive") or {}
    pairs = {}
    if hasattr(router, "adaptive_status"):  # the policy's own learners, restored as a gateway would
        router.load_adaptive_state(states)
        pairs.update(router.adaptive_status())
    for pair, state in states.items():  # saved for a pair the policy no longer adapts on
        pairs.setdefault(pair, _restore(router, state).status())
    for pair in _pairs(router):
        pairs.setdefault(pair, {"pair": pair, "labels_seen": 0, "state": "not adapted: the shipped classifier alone"})
    return {"saved_at": saved_at, "fitted_at": document.get("fitted_at"), "pairs": dict(sorted(pairs.items()))}


async def router_fit(store: Store, config: MuxgateConfig, out: str | None = None) -> dict:
    """Refit every pair from all its stored outcomes; write the store (or ``out``)."""
    from policies.adaptive import AdaptiveRouter

    router = _policy_router(config)
    learners = getattr(router, "adaptive", {})  # the policy's own (fresh) learners give prior and settings
    saved = await store.load_router_state()
    saved_states = (saved[0].get("adaptive") or {}) if saved is not None else {}
    fitted, summary = {}, {}
    for pair, share in _pairs(router).items():
        learner = learners.get(pair)
        if learner is not None:
            target, embedder, knobs = learner.target_large_share, learner.embedder, learner.state()["knobs"]
        else:
            template = saved_states.get(pair) or {}
            target, embedder, knobs = template.get("target_large_share", share), _embedder(template), \
                template.get("knobs", {})
        outcomes = await store.outcomes(0, time.time() + 1, pair=pair)
        refit = AdaptiveRouter.fit(router.classifier, outcomes, pair, target_large_share=target, embedder=embedder,
                                   **knobs)
        fitted[pair] = refit.state()
        summary[pair] = {**refit.status(), "outcomes": len(outcomes)}
    document = state_document(fitted, time.time())
    if out is None:
        await store.save_router_state(document)
        return {"written": "store", "pairs": summary}
    directory = Path(out)
    router.classifier.save(directory)
    (directory / FITTED_STATE_FILE).write_text(json.dumps(document, sort_keys=True) + "\n", encoding="utf-8")
    return {"written": str(directory), "pairs": summary}
