"""Key lookup behind the per-process cache, the admin key, and team scoping of reads."""

import asyncio

import pytest

from gateway.tenancy.callers import ADMIN, AdminKey, StoreAuthenticator, team_scope
from gateway.http.errors import Forbidden, Unauthorized
from gateway.store import Principal, StoreUnavailable
from gateway.tenancy.errors import StoreDown

pytestmark = pytest.mark.anyio

ALPHA = Principal("alpha", "k1", frozenset({"inference"}), None)
REPORTER = Principal("alpha", "k2", frozenset({"reports"}), None)


class FakeStore:
    """Answers lookups from a dict and counts them; can be made to fail or to block."""

    def __init__(self):
        self.keys = {"mg-alpha-secret-0123456789": ALPHA, "mg-reporter-secret-0123456789": REPORTER}
        self.lookups = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def lookup(self, secret):
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("down")
        return self.keys.get(secret)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(store, ttl=0.5):
    clock = Clock()
    auth = StoreAuthenticator(store, AdminKey("the-admin-key-0123456789"), ttl_s=ttl, clock=clock)
    return auth, clock


async def test_lookups_are_cached_for_the_ttl_then_reread():
    store = FakeStore()
    auth, clock = make(store)
    assert await auth.authenticate("Bearer mg-alpha-secret-0123456789") == ALPHA
    assert await auth.authenticate("Bearer mg-alpha-secret-0123456789") == ALPHA
    assert store.lookups == 1
    del store.keys["mg-alpha-secret-0123456789"]  # revoked elsewhere
    clock.now += 0.49
    assert await auth.authenticate("Bearer mg-alpha-secret-0123456789") == ALPHA
    clock.now += 0.02  # past the TTL: the revocation is seen
    with pytest.raises(Unauthorized):
        await auth.authenticate("Bearer mg-alpha-secret-0123456789")
    assert store.lookups == 2


async def test_unknown_keys_are_cached_too_and_never_show_the_secret():
    store = FakeStore()
    auth, _ = make(store)
    for _ in range(3):
        with pytest.raises(Unauthorized) as info:
            await auth.authenticate("Bearer mg-wrong-0123456789abcdefghij")
        assert "0123456789abcdefghij" not in info.value.message
    assert store.lookups == 1


async def test_concurrent_lookups_of_one_key_share_a_store_read():
    store = FakeStore()
    store.gate = asyncio.Event()
    auth, _ = make(store)
    tasks = [asyncio.create_task(auth.authenticate("Bearer mg-alpha-secret-0123456789")) for _ in range(50)]
    await asyncio.sleep(0)
    store.gate.set()
    assert all(p == ALPHA for p in await asyncio.gather(*tasks))
    assert store.lookups == 1


async def test_store_outage_fails_closed_with_503():
    store = FakeStore()
    store.down = True
    auth, _ = make(store)
    with pytest.raises(StoreDown) as info:
        await auth.authenticate("Bearer mg-alpha-secret-0123456789")
    assert info.value.status == 503 and info.value.retry_after


async def test_admin_key_is_admin_only_and_not_for_inference():
    auth, _ = make(FakeStore())
    assert await auth.require_admin("Bearer the-admin-key-0123456789") is ADMIN
    with pytest.raises(Forbidden):
        await auth.require_admin("Bearer mg-alpha-secret-0123456789")
    with pytest.raises(Unauthorized):
        await auth.require_admin(None)
    with pytest.raises(Forbidden):
        await auth.authenticate("Bearer the-admin-key-0123456789")
    with pytest.raises(Forbidden, match="inference"):
        await auth.authenticate("Bearer mg-reporter-secret-0123456789")
    assert not AdminKey(None).matches("anything")


def test_team_scope_limits_team_keys_to_their_own_team():
    assert team_scope(ADMIN, None) is None
    assert team_scope(ADMIN, "beta") == "beta"
    assert team_scope(ALPHA, None) == "alpha"
    assert team_scope(ALPHA, "alpha") == "alpha"
    with pytest.raises(Forbidden):
        team_scope(ALPHA, "beta")
