"""Contract: TPM taken in two steps (an estimate at admission, the rest once the prompt's real
count is known), reservations renewed while their request runs, and Redis admission on the
server's clock whatever the gateway's says (issue 19 items 10 and 11). Both backends."""

from __future__ import annotations

import time

import pytest
from store_testkit import FakeClock, usage_for

from gateway.store import Denial, Reservation

pytestmark = pytest.mark.anyio


async def _principal(store, **limits):
    await store.create_team("Acme", team_id="acme", **limits)
    return await store.lookup((await store.create_key("acme")).secret)


async def test_topping_up_a_reservation_takes_tpm_until_the_limit_and_no_further(backend):
    store = backend.open(clock=FakeClock())
    principal = await _principal(store, tpm_limit=1000)
    first = await store.reserve(principal, "m", "0", 300, request_id="r1")
    assert isinstance(first, Reservation) and first.tpm_limited
    topped = await store.take_tokens(first, 500)
    assert isinstance(topped, Reservation) and topped.tokens == 800
    assert isinstance(await store.take_tokens(topped, 200), Reservation)  # exactly the limit
    assert isinstance(await store.reserve(principal, "m", "0", 1, request_id="r2"), Denial)
    # settling on the real count gives back what the request did not use
    done = await store.take_tokens(first, 0)
    assert await store.settle(topped, usage_for(topped, prompt_tokens=100, completion_tokens=0))
    assert isinstance(await store.reserve(principal, "m", "0", 600, request_id="r3"), Reservation)
    assert done is first


async def test_a_refused_top_up_gives_back_what_the_request_held(backend):
    """Refused, the request will not run: its estimate must not keep another request out."""
    store = backend.open(clock=FakeClock())
    principal = await _principal(store, tpm_limit=1000)
    other = await store.reserve(principal, "m", "0", 400, request_id="other")
    refused_one = await store.reserve(principal, "m", "0", 500, request_id="r1")
    denial = await store.take_tokens(refused_one, 101)  # 400 + 500 + 101 > 1000
    assert isinstance(denial, Denial) and denial.limit == "team_tpm" and denial.retry_after_s > 0
    assert isinstance(await store.take_tokens(other, 600), Reservation)  # its 500 are free again


async def test_a_key_limit_refuses_a_top_up_the_team_would_allow(backend):
    store = backend.open(clock=FakeClock())
    await store.create_team("Acme", team_id="acme", tpm_limit=10_000)
    principal = await store.lookup((await store.create_key("acme", tpm_limit=100)).secret)
    reservation = await store.reserve(principal, "m", "0", 50, request_id="r1")
    refused = await store.take_tokens(reservation, 51)
    assert isinstance(refused, Denial) and refused.limit == "key_tpm"
    # its 50 went back to the key and took nothing from the team: the key's whole limit fits
    assert isinstance(await store.reserve(principal, "m", "0", 100, request_id="r2"), Reservation)


async def test_a_reservation_without_a_tpm_limit_says_so(backend):
    store = backend.open(clock=FakeClock())
    principal = await _principal(store, budget_usd="5")
    reservation = await store.reserve(principal, "m", "0.1", 50, request_id="r1")
    assert not reservation.tpm_limited


async def test_a_renewed_reservation_still_holds_its_budget_past_its_first_ttl(backend):
    clock = FakeClock()
    store = backend.open(clock=clock, reservation_ttl_s=600)
    principal = await _principal(store, budget_usd="1")
    running = await store.reserve(principal, "m", "0.8", 10, request_id="long")
    clock.advance(500)
    assert await store.renew([running]) == 1
    clock.advance(500)  # 1000 s after it began: without the renewal its hold would have expired
    assert isinstance(await store.reserve(principal, "m", "0.5", 10, request_id="other"), Denial)
    clock.advance(601)  # not renewed again: it expires
    assert await store.renew([running]) == 0
    assert isinstance(await store.reserve(principal, "m", "0.5", 10, request_id="later"), Reservation)


async def test_redis_admission_runs_on_the_servers_clock_not_the_gateways(backend):
    """Two gateways whose clocks disagree by an hour share one RPM limit exactly; with each
    gateway's own clock the one behind saw the other's GCRA state an hour in the future (every
    request refused) or, ahead, saw it long refilled (the limit doubled)."""
    if backend.kind != "redis":
        pytest.skip("SQLite is one file on one machine: its gateways share a clock")
    from gateway.store.redis_store import RedisStore

    behind = RedisStore(backend.redis_url, prefix=backend.prefix, clock=lambda: time.time() - 3600,
                        server_time=True)
    ahead = RedisStore(backend.redis_url, prefix=backend.prefix, clock=lambda: time.time() + 3600,
                       server_time=True)
    try:
        principal = await _principal(behind, rpm_limit=4)
        outcomes = []
        for i in range(8):  # alternating gateways: 4 fit in the minute, whichever gateway asks
            store = (behind, ahead)[i % 2]
            outcomes.append(isinstance(await store.reserve(principal, "m", "0", 1, request_id=f"r{i}"), Reservation))
        assert outcomes == [True] * 4 + [False] * 4
        held = await ahead.reserve(principal, "m", "0", 1, request_id="r0")  # a replay: the same hold
        assert isinstance(held, Reservation) and abs(held.expires_at - (time.time() + 600)) < 30
    finally:
        await behind.close()
        await ahead.close()
