"""Routes with `adapt`: auto follows the pair's AdaptiveRouter, which learns from outcomes, keeps
its evidence across a policy reload, and saves/restores its state (what the gateway persists)."""

import asyncio
import json
import os

import pytest
import yaml

from policies.decision import RouteContext
from policies.outcome import Outcome, encode_features
from policies.policy import PolicyError, parse_policy
from policies.policy_router import PolicyRouter, ReloadingRouter

SERVED = {"s1", "s2", "l1"}


def policy(**route):
    return {
        "version": 1,
        "tiers": {"small": ["s1", "s2"], "large": ["l1"]},
        "routes": {"default": {"large_share": 0.3, "adapt": True, "budget_downgrade_at": None, **route}},
    }


def decide(router, prompt):
    return asyncio.run(router.decide("auto", RouteContext(team="t", prompt=prompt)))


@pytest.fixture(scope="module")
def prompts(sample):
    return [ex.text.user for ex in sample]


def test_auto_follows_the_adaptive_router_at_the_target_share(shipped, prompts):
    router = PolicyRouter(parse_policy(policy(), known_models=SERVED), SERVED, classifier=shipped)
    decisions = [decide(router, p) for p in prompts * 2]
    assert {d.reason for d in decisions} == {"route:default:adaptive_large", "route:default:adaptive_small"}
    assert all(d.pair == "s1->l1" and d.features is not None and 0 <= d.score <= 1 for d in decisions)
    large = [d.model == "l1" for d in decisions]
    assert abs(sum(large[-1000:]) / 1000 - 0.3) <= 0.02
    assert router.adaptive_status()["s1->l1"]["large_share"] == pytest.approx(0.3, abs=0.02)


def test_observe_teaches_the_pair_and_the_state_round_trips(shipped, prompts):
    router = PolicyRouter(parse_policy(policy(), known_models=SERVED), SERVED, classifier=shipped)
    features = router.request_features("t", prompt=prompts[0])
    assert features.embedding is not None  # the learner reads the static embedding by default
    row = Outcome("r1", "t", "s1->l1", "small", 0.1, 1.0, "shadow", encode_features(features), 0.0)
    assert router.observe(row) is True
    assert router.observe(Outcome("r2", "t", "x->y", "small", 0.1, None, "feedback", row.features, 0.0)) is False
    saved = json.loads(json.dumps(router.adaptive_state()))
    assert list(saved) == ["s1->l1"]
    fresh = PolicyRouter(parse_policy(policy(), known_models=SERVED), SERVED, classifier=shipped)
    fresh.load_adaptive_state(saved | {"other->pair": saved["s1->l1"]})
    assert fresh.adaptive_status()["s1->l1"]["labels_seen"] == 1
    assert decide(fresh, prompts[5]).score == decide(router, prompts[5]).score


def test_a_reload_keeps_what_the_router_learnt(shipped, prompts, tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy()))
    reloading = ReloadingRouter(str(path), SERVED, classifier=shipped)
    features = reloading.current.request_features("t", prompt=prompts[0])
    reloading.current.observe(Outcome("r1", "t", "s1->l1", "large", 0.0, 1.0, "shadow", encode_features(features), 0.0))
    path.write_text(yaml.safe_dump(policy(large_share=0.4)))  # a new target: the evidence stays
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert reloading.check_reload()
    status = reloading.current.adaptive_status()["s1->l1"]
    assert (status["labels_seen"], status["target_large_share"]) == (1, 0.4)


def test_adapt_is_refused_on_a_fixed_route():
    with pytest.raises(PolicyError, match="adapt"):
        parse_policy({"version": 1, "tiers": {"small": ["s1"]},
                      "routes": {"default": {"strategy": "fixed", "model": "s1", "adapt": True}}})


def test_routes_without_adapt_route_as_before(shipped, prompts):
    router = PolicyRouter(parse_policy(policy(adapt=False), known_models=SERVED), SERVED, classifier=shipped)
    assert router.adaptive == {}
    decision = decide(router, prompts[0])
    assert decision.reason.split(":")[-1] in ("classifier_large", "classifier_small") and decision.pair is None
