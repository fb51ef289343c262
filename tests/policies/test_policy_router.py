"""Routing policies: validation, hot reload, budget/capacity downgrades, affinity, fallbacks."""

import asyncio
import os
import time

import pytest
import yaml

from policies.decision import RouteContext
from policies.policy import PolicyError, load_policy, parse_policy
from policies.policy_router import PolicyRouter, ReloadingRouter

SERVED = {"s1", "s2", "l1", "l2", "fb"}
POLICY = {
    "version": 1,
    "tiers": {"small": ["s1", "s2"], "large": ["l1", "l2"]},
    "routes": {"default": {"threshold": 0.5, "fallbacks": ["fb"]},
               "cheap": {"strategy": "fixed", "model": "s2"}},
    "teams": {"thrifty": {"route": "cheap"}},
}


class FixedScore:
    """A stand-in classifier: the score is the prompt's length / 100, capped at 1."""

    def features(self, messages=None, prompt=None):
        return prompt if prompt is not None else " ".join(m["content"] for m in messages)

    def score_features(self, text):
        return min(1.0, len(text) / 100)

    def score(self, messages=None, prompt=None):
        return self.score_features(self.features(messages, prompt))


class Signals:
    def __init__(self, budget=None, depth=0):
        self.budget, self.depth = budget, depth

    async def budget_used_fraction(self, team):
        return self.budget

    def queue_depth(self, model):
        return self.depth


def decide(router, text, team="t", session=None):
    return asyncio.run(router.decide("auto", RouteContext(team, None, text, session)))


def router(signals=None, policy=POLICY):
    return PolicyRouter(parse_policy(policy), SERVED, FixedScore(), signals)


def test_classifier_picks_the_tier_and_names_why():
    easy, hard = decide(router(), "hi"), decide(router(), "x" * 80)
    assert (easy.model, easy.reason) == ("s1", "route:default:classifier_small")
    assert (hard.model, hard.reason) == ("l1", "route:default:classifier_large")
    assert hard.score == pytest.approx(0.8)
    assert hard.fallbacks == ("l2", "s1", "s2", "fb")
    assert hard.features == "x" * 80  # handed over, so the routed request's record does not featurise again


def test_team_near_its_budget_is_steered_to_the_small_tier():
    d = decide(router(Signals(budget=0.95)), "x" * 80)
    assert (d.model, d.reason) == ("s1", "route:default:budget_downgrade")
    assert decide(router(Signals(budget=0.5)), "x" * 80).model == "l1"


def test_saturated_large_tier_falls_back_to_small():
    d = decide(router(Signals(depth=50)), "x" * 80)
    assert (d.model, d.reason) == ("s1", "route:default:capacity_downgrade")
    queueing = {**POLICY, "routes": {**POLICY["routes"], "default": {
        "threshold": 0.5, "capacity": {"max_queue_depth": 1, "on_saturated": "queue"}}}}
    assert decide(router(Signals(depth=50), queueing), "x" * 80).model == "l1"


def test_agent_sessions_keep_their_model_across_steps():
    r = router()
    first = decide(r, "x" * 80, session="agent-1")
    later = decide(r, "short follow-up", session="agent-1")
    assert first.model == later.model == "l1"
    assert later.reason == "route:default:session_affinity"
    assert decide(r, "short follow-up", session="agent-2").model == "s1"


def test_team_override_and_explicit_models():
    r = router()
    assert decide(r, "x" * 80, team="thrifty").model == "s2"
    explicit = asyncio.run(r.decide("l2", RouteContext("t")))
    assert (explicit.model, explicit.reason) == ("l2", "explicit")
    assert asyncio.run(r.decide("nope", RouteContext("t"))) is None


def test_tools_and_response_formats_pick_their_tiers():
    agents = {**POLICY, "routes": {**POLICY["routes"], "default": {
        "threshold": 0.5, "tools_tier": "large", "structured_tier": "small"}}}
    r = router(policy=agents)

    def ask(**kind):
        return asyncio.run(r.decide("auto", RouteContext("t", None, "hi", None, **kind)))
    tools, structured, plain = ask(tools=True), ask(structured=True, tools=False), ask()
    assert (tools.model, tools.reason) == ("l1", "route:default:tools_tier")
    assert (structured.model, structured.reason) == ("s1", "route:default:structured_tier")
    assert (plain.model, plain.reason) == ("s1", "route:default:classifier_small")  # the classifier, as before
    assert ask(tools=True, structured=True).reason == "route:default:tools_tier"  # an agent's step wins
    # without the keys, tools are routed like any request
    assert decide(router(), "hi").reason == asyncio.run(router().decide(
        "auto", RouteContext("t", None, "hi", None, tools=True))).reason == "route:default:classifier_small"


@pytest.mark.parametrize("change,where", [
    ({"surprise": 1}, "surprise"),
    ({"tiers": {"small": []}}, "small"),
    ({"routes": {"default": {"threshold": 0.5, "large_share": 0.3}}}, "routes.default"),
    ({"routes": {"default": {"large": "huge"}}}, "huge"),
    ({"teams": {"x": {"route": "ghost"}}}, "ghost"),
    ({"routes": {"default": {"threshold": 1.5}}}, "routes.default.threshold"),
    ({"routes": {"default": {"tools_tier": "xl"}}}, "routes.default.tools_tier"),
    ({"routes": {"default": {"priority": 4}}}, "routes.default.priority"),
    ({"routes": {"default": {"priority": -4}}}, "routes.default.priority"),
    ({"routes": {"default": {"priority": True}}}, "routes.default.priority"),  # `yes` is no level
    ({"routes": {"default": {"priorty": 1}}}, "routes.default.priorty"),
])
def test_invalid_policies_are_refused_naming_file_and_key(tmp_path, change, where):
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump({**POLICY, **change}))
    with pytest.raises(PolicyError) as info:
        load_policy(path, SERVED)
    assert str(path) in str(info.value) and where in str(info.value)


def test_a_policy_naming_unserved_models_is_refused(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump({**POLICY, "tiers": {"small": ["s1"], "large": ["gpt-9"]}}))
    with pytest.raises(PolicyError, match="gpt-9"):
        load_policy(path, SERVED)


def test_hot_reload_takes_good_files_and_keeps_the_old_policy_on_bad_ones(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    r = ReloadingRouter(str(path), SERVED, classifier=FixedScore())
    assert asyncio.run(r.decide("auto", RouteContext("t", None, "hi"))).model == "s1"

    def rewrite(data):
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a distinct mtime, however fast

    rewrite({**POLICY, "tiers": {"small": ["s2"], "large": ["l1"]}})
    assert r.check_reload() and r.reloads == 1
    assert asyncio.run(r.decide("auto", RouteContext("t", None, "hi"))).model == "s2"
    rewrite("version: 1\ntiers: {small: [s1]\n")  # broken YAML
    assert not r.check_reload()
    assert r.reload_errors == 1 and "not valid YAML" in r.last_error
    assert asyncio.run(r.decide("auto", RouteContext("t", None, "hi"))).model == "s2"  # still the good one
    rewrite({**POLICY, "tiers": {"small": ["unknown-model"], "large": ["l1"]}})
    assert not r.check_reload() and r.reload_errors == 2


def test_a_routes_priority_is_on_every_decision_for_its_teams_and_reloads(tmp_path):
    """`auto` and explicit models alike (it weighs the team's requests in the pool, whatever model
    they name); teams on other routes keep 0; an edit of the file changes it without a restart."""
    path = tmp_path / "routing.yaml"
    urgent = {**POLICY, "routes": {**POLICY["routes"], "cheap": {"strategy": "fixed", "model": "s2", "priority": 2}}}
    path.write_text(yaml.safe_dump(urgent))
    r = ReloadingRouter(str(path), SERVED, classifier=FixedScore())

    def priorities(team):
        return [asyncio.run(r.decide(model, RouteContext(team, None, "hi"))).priority for model in ("auto", "l2")]
    assert priorities("thrifty") == [2, 2]
    assert priorities("t") == [0, 0]
    urgent["routes"]["cheap"]["priority"] = -1
    path.write_text(yaml.safe_dump(urgent))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert r.check_reload()
    assert priorities("thrifty") == [-1, -1]


def test_shipped_policy_is_valid_for_the_default_config():
    from gateway.config import load_config
    from support import REPO

    config = load_config(REPO / "configs" / "default.yaml")
    load_policy(REPO / "configs" / "routing.yaml", {m.name for m in config.models})


def test_auto_chooses_only_models_the_key_may_use():
    """A key limited to the small tier used to be routed to the large model, then refused 403
    for a model it never asked for."""
    small_only = RouteContext("t", None, "x" * 80, None, allowed=frozenset({"s2"}))
    d = asyncio.run(router().decide("auto", small_only))
    assert d.model == "s2" and d.fallbacks == ()
    second_large = asyncio.run(router().decide("auto", RouteContext("t", None, "x" * 80, allowed=frozenset({"l2", "s1"}))))
    assert (second_large.model, second_large.fallbacks) == ("l2", ("s1",))
    only_fallback = asyncio.run(router().decide("auto", RouteContext("t", None, "hi", allowed=frozenset({"fb"}))))
    assert only_fallback.model == "fb"
    assert asyncio.run(router().decide("auto", RouteContext("t", None, "hi", allowed=frozenset({"other"})))) is None
    fixed = asyncio.run(router().decide("auto", RouteContext("thrifty", None, "hi", allowed=frozenset({"s1"}))))
    assert fixed is None  # the cheap route's model and fallbacks are all off this key


def test_a_sessions_pin_and_a_request_kinds_tier_pass_the_downgrades_too():
    """Session affinity used to skip the budget and capacity checks."""
    signals = Signals()
    r = router(signals)
    assert decide(r, "x" * 80, session="agent-1").model == "l1"
    signals.budget = 0.99
    pinned = decide(r, "short follow-up", session="agent-1")
    assert (pinned.model, pinned.reason) == ("s1", "route:default:budget_downgrade")
    signals.budget, signals.depth = None, 50
    agents = {**POLICY, "routes": {**POLICY["routes"], "default": {"threshold": 0.5, "tools_tier": "large"}}}
    tools = asyncio.run(router(signals, agents).decide("auto", RouteContext("t", None, "hi", None, tools=True)))
    assert (tools.model, tools.reason) == ("s1", "route:default:capacity_downgrade")
