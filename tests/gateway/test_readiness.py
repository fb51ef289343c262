"""/healthz is liveness (the process answers); /readyz is readiness (the store and the pool answer)."""

import asyncio

import httpx

from gateway.store.errors import StoreUnavailable


def test_readyz_is_ready_when_the_store_and_the_pool_answer(gateway):
    r = httpx.get(gateway.base_url + "/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"pool": "ok", "store": "ok"}}


def test_readyz_names_the_store_when_it_does_not_answer_and_healthz_stays_ok(gateway, monkeypatch):
    store = gateway.app.state.gateway.tenancy.store

    async def down():
        raise StoreUnavailable("redis: connection refused")

    monkeypatch.setattr(store, "ping", down)
    r = httpx.get(gateway.base_url + "/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "not_ready"
    assert r.json()["checks"]["pool"] == "ok"
    assert "connection refused" in r.json()["checks"]["store"]
    assert httpx.get(gateway.base_url + "/healthz").status_code == 200  # liveness: do not restart


def test_readyz_answers_503_in_time_when_the_pool_hangs(gateway, monkeypatch):
    backend = gateway.app.state.gateway.backend

    async def hang():
        await asyncio.sleep(3600)

    monkeypatch.setattr(backend, "models", hang)
    r = httpx.get(gateway.base_url + "/readyz", timeout=10)
    assert r.status_code == 503
    assert r.json()["checks"]["pool"].startswith("no answer within")
