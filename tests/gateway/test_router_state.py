"""The router's learned state and the store (gateway/learning/router_state.py), on a real SQLite file:
loaded at start, saved by each tick (the last writer wins), a newer refit in the store is loaded
instead of saved over, and a reloaded policy's weights directory brings its refit in."""

from __future__ import annotations

import json

import pytest

from gateway.learning.router_state import FITTED_STATE_FILE, RouterStateSync, state_document
from gateway.store import open_store
from policies.policy import parse_policy

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class LearningRouter:
    """The PolicyRouter's learning interface (observe / adaptive_state / load_adaptive_state)
    over a plain dict, so these tests see exactly what the sync loads and saves."""

    def __init__(self, weights: str | None = None):
        policy = {"version": 1, "tiers": {"small": ["s"], "large": ["l"]}, "routes": {"default": {}}}
        if weights:
            policy["classifier"] = {"weights": weights}
        self.policy = parse_policy(policy)
        self.state = {}

    def route_for(self, team):
        return "default", self.policy.routes["default"]

    def adaptive_state(self) -> dict:
        return dict(self.state)

    def load_adaptive_state(self, state: dict) -> None:
        self.state = dict(state)


class Reloading:
    def __init__(self, current):
        self.current = current


@pytest.fixture
async def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'muxgate.db'}")
    yield store
    await store.close()


async def test_a_gateway_starts_from_the_stored_state_and_saves_what_it_learnt(store):
    await store.save_router_state(state_document({"s->l": {"n": 1}}, None))
    router = Reloading(LearningRouter())
    sync = RouterStateSync(store, router, period_s=60)
    assert await sync.load() and router.current.state == {"s->l": {"n": 1}}
    router.current.state["s->l"] = {"n": 2}
    await sync.tick()
    assert (await store.load_router_state())[0] == {"adaptive": {"s->l": {"n": 2}}, "fitted_at": None}


async def test_a_newer_refit_in_the_store_replaces_the_learnt_state_instead_of_being_saved_over(store):
    router = Reloading(LearningRouter())
    sync = RouterStateSync(store, router, period_s=60)
    await sync.load()
    router.current.state = {"s->l": {"n": 5}}
    await store.save_router_state(state_document({"s->l": {"refit": True}}, 1000.0))  # muxgate router fit
    await sync.tick()
    assert router.current.state == {"s->l": {"refit": True}} and sync.fitted_at == 1000.0
    router.current.state["s->l"] = {"refit": True, "n": 1}
    await sync.tick()  # the refit is now this gateway's starting point: learning goes on from it
    assert (await store.load_router_state())[0] == {"adaptive": {"s->l": {"refit": True, "n": 1}}, "fitted_at": 1000.0}


async def test_a_reloaded_policy_brings_its_weights_directorys_refit(store, tmp_path):
    router = Reloading(LearningRouter())
    sync = RouterStateSync(store, router, period_s=60)
    await sync.load()
    refit = tmp_path / "refit"
    refit.mkdir()
    (refit / FITTED_STATE_FILE).write_text(json.dumps(state_document({"s->l": {"from": "dir"}}, 2000.0)))
    router.current = LearningRouter(weights=str(refit))  # the policy file now names the refit
    await sync.tick()
    assert router.current.state == {"s->l": {"from": "dir"}}
    assert (await store.load_router_state())[0]["fitted_at"] == 2000.0


async def test_without_a_learning_router_nothing_is_written(store):
    class Plain(LearningRouter):
        adaptive_state = None
        load_adaptive_state = None

    sync = RouterStateSync(store, Reloading(Plain()), period_s=60)
    assert await sync.load() is False
    await sync.tick()
    assert await store.load_router_state() is None
