"""`store.when_unavailable: open`: while the store is down, keys verified before the outage keep
working (without a reservation), unknown keys are still refused, and every admitted request's
usage is recorded once the store is back."""

import asyncio
import time

import httpx

from gateway.store import open_store
from loadtests.chaos_kit import ADMIN_KEY, GatewayProcess, RedisProcess, gateway_config


def chat(gw, key):
    return httpx.post(gw.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


def test_fail_open_serves_known_keys_and_records_their_usage_after_recovery(zoo_dir, tmp_path):
    redis = RedisProcess(tmp_path / "redis").start()
    config = gateway_config(zoo_dir, redis.url, store={"when_unavailable": "open", "auth_cache_ttl_s": 0.2})
    gw = GatewayProcess(config, tmp_path / "gw", "open").start().wait_ready()
    try:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        httpx.post(gw.base_url + "/v1/admin/teams", headers=admin, json={"id": "t", "name": "T"}, timeout=30)
        key = httpx.post(gw.base_url + "/v1/admin/keys", headers=admin, json={"team": "t"}, timeout=30).json()["secret"]
        first = chat(gw, key)
        assert first.status_code == 200, first.text
        redis.kill()
        time.sleep(0.5)  # past the auth cache: the next lookup goes to the (dead) store
        during = chat(gw, key)
        assert during.status_code == 200, during.text
        unknown = chat(gw, "mg-0000000000000000_" + "x" * 43)
        assert unknown.status_code == 503 and unknown.json()["error"]["message"]
        redis.start()
        expected = {first.headers["x-request-id"], during.headers["x-request-id"]}

        async def recorded() -> set[str]:
            store = open_store(redis.url)
            try:
                rows = await store.usage_records(time.time() - 600, time.time() + 600, team_id="t")
                return {r.request_id for r in rows}
            finally:
                await store.close()

        deadline = time.time() + 30
        while time.time() < deadline and not expected <= asyncio.run(recorded()):
            time.sleep(0.5)  # the ledger buffer replays with backoff
        assert expected <= asyncio.run(recorded())
    finally:
        gw.terminate()
        redis.stop()
