"""Contract: reserve/settle, budgets, rate limits, expiry and period rollover (both backends)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from store_testkit import T0, FakeClock, money, usage_for

from gateway.store import Denial, InvalidInput, NotFound, Principal, Reservation
from gateway.store.periods import period_window

pytestmark = pytest.mark.anyio


async def _team_and_key(store, **team_limits):
    key_limits = team_limits.pop("key", {})
    await store.create_team("Acme", team_id="acme", **team_limits)
    created = await store.create_key("acme", **key_limits)
    return await store.lookup(created.secret)


async def test_reserve_then_settle_charges_actual_cost(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    principal = await _team_and_key(store, budget_usd="1")
    reservation = await store.reserve(principal, "small", "0.3", 500, request_id="req-1")
    assert isinstance(reservation, Reservation)
    assert (reservation.id, reservation.cost_usd, reservation.tokens) == (
        "req-1", money("0.3"), 500)
    assert reservation.expires_at == clock.now + 600

    spend = await store.spend("acme")
    assert (spend.spent_usd, spend.reserved_usd, spend.remaining_usd) == (
        money("0"), money("0.3"), money("0.7"))
    assert await store.settle(reservation, usage_for(reservation, cost_usd="0.1234567")) is True
    spend = await store.spend("acme")
    assert (spend.spent_usd, spend.reserved_usd, spend.remaining_usd) == (
        money("0.123457"), money("0"), money("0.876543"))
    assert spend.budget_period == "monthly"
    window = period_window("monthly", clock.now)
    assert (spend.period_start, spend.period_end) == (window.start, window.end)


async def test_settle_is_idempotent(backend):
    store = backend.open(clock=FakeClock())
    principal = await _team_and_key(store, budget_usd="1")
    reservation = await store.reserve(principal, "small", "0.5", 100)
    record = usage_for(reservation, cost_usd="0.2")
    assert await store.settle(reservation, record) is True
    assert await store.settle(reservation, record) is False
    assert await backend.open(clock=FakeClock()).settle(reservation, record) is False
    assert (await store.spend("acme")).spent_usd == money("0.2")
    assert await store.usage_records(T0 - 1, T0 + 1) == [record]
    [total] = await store.usage_report(T0 - 3600, T0 + 3600)
    assert (total.requests, total.cost_usd) == (1, money("0.2"))


async def test_settle_checks_the_record_matches(backend):
    store = backend.open()
    principal = await _team_and_key(store)
    reservation = await store.reserve(principal, "small", "0.01", 10)
    other = await store.reserve(principal, "small", "0.01", 10)
    with pytest.raises(InvalidInput):
        await store.settle(reservation, usage_for(other))


async def test_reserve_is_idempotent_per_request_id(backend):
    store = backend.open(clock=FakeClock())
    principal = await _team_and_key(store, budget_usd="1")
    first = await store.reserve(principal, "small", "0.4", 10, request_id="retry-me")
    again = await store.reserve(principal, "small", "0.4", 10, request_id="retry-me")
    assert again == first
    assert (await store.spend("acme")).reserved_usd == money("0.4")


async def test_team_budget_denial_retries_at_period_end(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    principal = await _team_and_key(store, budget_usd="1", budget_period="monthly")
    assert isinstance(await store.reserve(principal, "small", "0.6", 1), Reservation)
    denial = await store.reserve(principal, "small", "0.6", 1)
    month_end = period_window("monthly", clock.now).end
    assert denial == Denial("team_budget", pytest.approx(month_end - clock.now), denial.detail)
    # A denial takes nothing: a request that fits is still admitted.
    assert isinstance(await store.reserve(principal, "small", "0.4", 1), Reservation)


async def test_key_budget_narrows_the_team_budget(backend):
    store = backend.open(clock=FakeClock())
    principal = await _team_and_key(store, budget_usd="100",
                                    key=dict(budget_usd="0.5", budget_period="total"))
    assert isinstance(await store.reserve(principal, "small", "0.5", 1), Reservation)
    denial = await store.reserve(principal, "small", "0.01", 1)
    assert (denial.limit, denial.retry_after_s) == ("key_budget", None)
    # Another key of the same team is not affected.
    other = await store.lookup((await store.create_key("acme")).secret)
    assert isinstance(await store.reserve(other, "small", "0.5", 1), Reservation)


async def test_rpm_limits_and_retry_after(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    principal = await _team_and_key(store, rpm_limit=10, key=dict(rpm_limit=2))
    for _ in range(2):
        assert isinstance(await store.reserve(principal, "small", 0, 1), Reservation)
    denial = await store.reserve(principal, "small", 0, 1)
    assert (denial.limit, denial.retry_after_s) == ("key_rpm", 30.0)
    clock.advance(30)
    assert isinstance(await store.reserve(principal, "small", 0, 1), Reservation)

    # The team limit binds across the team's keys.
    # One request 30 s ago is still 6 s "ahead", so 9 of the team's 10 per minute are left.
    others = [await store.lookup((await store.create_key("acme")).secret) for _ in range(5)]
    admitted = [await store.reserve(p, "small", 0, 1) for p in others for _ in range(2)]
    assert [isinstance(a, Reservation) for a in admitted] == [True] * 9 + [False]
    assert admitted[-1].limit == "team_rpm"
    assert admitted[-1].retry_after_s == pytest.approx(6.0)


async def test_rpm_limit_is_shared_by_two_store_instances(backend):
    clock = FakeClock()
    first, second = backend.open(clock=clock), backend.open(clock=clock)
    principal = await _team_and_key(first, rpm_limit=5)
    outcomes = []
    for i in range(8):
        outcomes.append(await (first if i % 2 else second).reserve(principal, "small", 0, 1))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 5
    assert {o.limit for o in outcomes if isinstance(o, Denial)} == {"team_rpm"}
    assert outcomes[5].retry_after_s == 12.0
    clock.advance(12)
    assert isinstance(await first.reserve(principal, "small", 0, 1), Reservation)
    assert isinstance(await second.reserve(principal, "small", 0, 1), Denial)


async def test_tpm_worst_case_and_refund_at_settle(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    principal = await _team_and_key(store, tpm_limit=1000)
    big = await store.reserve(principal, "small", 0, 600)
    assert isinstance(big, Reservation)
    denial = await store.reserve(principal, "small", 0, 500)
    assert (denial.limit, denial.retry_after_s) == ("team_tpm", 6.0)
    # The request used 100 of its 600 worst-case tokens: the other 500 come back.
    await store.settle(big, usage_for(big, prompt_tokens=40, completion_tokens=60))
    assert isinstance(await store.reserve(principal, "small", 0, 500), Reservation)
    never = await store.reserve(principal, "small", 0, 1001)
    assert (never.limit, never.retry_after_s) == ("team_tpm", None)


async def test_key_tpm(backend):
    store = backend.open(clock=FakeClock())
    principal = await _team_and_key(store, key=dict(tpm_limit=100))
    assert isinstance(await store.reserve(principal, "small", 0, 100), Reservation)
    assert (await store.reserve(principal, "small", 0, 1)).limit == "key_tpm"


async def test_model_allow_lists(backend):
    store = backend.open()
    principal = await _team_and_key(store, allowed_models=["small", "large"],
                                    key=dict(allowed_models=["large", "other"]))
    assert principal.allowed_models == frozenset({"large"})
    assert (await store.reserve(principal, "small", 0, 1)).limit == "model_not_allowed"
    assert isinstance(await store.reserve(principal, "large", 0, 1), Reservation)
    await store.update_team("acme", allowed_models=[])
    assert isinstance(await store.reserve(principal, "other", 0, 1), Reservation)


async def test_revoked_key_is_denied_even_with_a_cached_principal(backend):
    store = backend.open()
    principal = await _team_and_key(store)
    await store.revoke_key(principal.key_id)
    assert (await store.reserve(principal, "small", 0, 1)).limit == "key_revoked"


async def test_unknown_team_or_key(backend):
    store = backend.open()
    principal = await _team_and_key(store)
    with pytest.raises(NotFound):
        await store.reserve(Principal("ghost", principal.key_id, frozenset(), None), "s", 0, 1)
    with pytest.raises(NotFound):
        await store.reserve(Principal("acme", "0" * 16, frozenset(), None), "s", 0, 1)
    with pytest.raises(InvalidInput):
        await store.reserve(principal, "small", "-0.01", 1)


async def test_expired_reservations_release_budget(backend):
    clock = FakeClock()
    store = backend.open(clock=clock, reservation_ttl_s=60)
    principal = await _team_and_key(store, budget_usd="1")
    crashed = [await store.reserve(principal, "small", "0.5", 1) for _ in range(2)]
    assert (await store.reserve(principal, "small", "0.5", 1)).limit == "team_budget"
    clock.advance(59.9)
    assert (await store.reserve(principal, "small", "0.5", 1)).limit == "team_budget"
    assert (await store.spend("acme")).reserved_usd == money("1")
    clock.advance(0.1)
    assert (await store.spend("acme")).reserved_usd == money("0")
    late = await store.reserve(principal, "small", "0.5", 1)
    assert isinstance(late, Reservation)
    # A settle that arrives after expiry still records the usage and charges it.
    assert await store.settle(crashed[0], usage_for(crashed[0], cost_usd="0.25")) is True
    spend = await store.spend("acme")
    assert (spend.spent_usd, spend.reserved_usd) == (money("0.25"), money("0.5"))


async def test_daily_budget_resets_on_a_new_day(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    principal = await _team_and_key(store, budget_usd="0.10", budget_period="daily")
    reservation = await store.reserve(principal, "small", "0.10", 1)
    await store.settle(reservation, usage_for(reservation, cost_usd="0.10"))
    denial = await store.reserve(principal, "small", "0.01", 1)
    midnight = period_window("daily", clock.now).end
    assert denial.limit == "team_budget"
    assert denial.retry_after_s == pytest.approx(midnight - clock.now)
    clock.now = midnight
    assert (await store.spend("acme")).spent_usd == money("0")
    assert isinstance(await store.reserve(principal, "small", "0.10", 1), Reservation)
    assert (await store.spend("acme", now=midnight - 1)).spent_usd == money("0.10")


async def test_spend_of_unlimited_team(backend):
    store = backend.open()
    await _team_and_key(store)
    spend = await store.spend("acme")
    assert (spend.budget_usd, spend.remaining_usd, spend.spent_usd) == (None, None, Decimal(0))
    with pytest.raises(NotFound):
        await store.spend("ghost")


async def test_a_deleted_teams_late_settlement_keeps_its_record_but_charges_no_team(backend):
    """A request in flight when its team is deleted used to re-create the team's spend row, so a
    team re-created under the same id started with the old team's spend."""
    clock = FakeClock()
    store = backend.open(clock=clock)
    principal = await _team_and_key(store, budget_usd="1")
    reservation = await store.reserve(principal, "small", "0.5", 100, request_id="in-flight")
    await store.delete_team("acme")
    clock.now += 5
    await store.create_team("Acme again", team_id="acme", budget_usd="1")
    assert await store.settle(reservation, usage_for(reservation, cost_usd="0.4")) is True
    assert (await store.spend("acme")).spent_usd == money("0")  # the new team owes nothing
    assert [r.request_id for r in await store.usage_records(T0 - 1, T0 + 10)] == ["in-flight"]  # ledger kept
