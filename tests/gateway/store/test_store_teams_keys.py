"""Contract: teams and API keys (both backends)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from store_testkit import FakeClock

from gateway.store import Conflict, InvalidInput, NotFound, Principal, Team

pytestmark = pytest.mark.anyio


async def test_team_lifecycle(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    team = await store.create_team("Acme", team_id="acme", budget_usd="12.5",
                                   budget_period="daily", rpm_limit=60, tpm_limit=10_000,
                                   allowed_models=["small", "large"])
    assert team == Team(id="acme", name="Acme", budget_usd=Decimal("12.500000"),
                        budget_period="daily", rpm_limit=60, tpm_limit=10_000,
                        allowed_models=("large", "small"), created_at=clock.now)
    assert await store.get_team("acme") == team
    clock.advance(1)
    other = await store.create_team("Other")
    assert other.id.startswith("team_")
    assert [t.id for t in await store.list_teams()] == ["acme", other.id]

    updated = await store.update_team("acme", budget_usd=None, rpm_limit=120)
    assert (updated.budget_usd, updated.rpm_limit, updated.tpm_limit) == (None, 120, 10_000)
    assert await store.get_team("acme") == updated

    await store.delete_team("acme")
    assert await store.get_team("acme") is None
    assert [t.id for t in await store.list_teams()] == [other.id]


async def test_team_errors(backend):
    store = backend.open()
    await store.create_team("Acme", team_id="acme")
    with pytest.raises(Conflict):
        await store.create_team("Again", team_id="acme")
    with pytest.raises(NotFound):
        await store.update_team("nope", name="x")
    with pytest.raises(NotFound):
        await store.delete_team("nope")
    with pytest.raises(NotFound):
        await store.create_key("nope")
    for bad in (dict(budget_period="weekly"), dict(rpm_limit=0), dict(budget_usd="-1"),
                dict(team_id="has space"), dict(allowed_models="small")):
        with pytest.raises(InvalidInput):
            await store.create_team("Bad", **bad)
    with pytest.raises(InvalidInput):
        await store.update_team("acme", tpm_limit=-5)
    assert (await store.get_team("acme")).tpm_limit is None


async def test_created_key_authenticates(backend):
    store = backend.open()
    await store.create_team("Acme", team_id="acme", allowed_models=["small", "large"])
    created = await store.create_key("acme", name="ci", scopes=["inference", "admin"],
                                     allowed_models=["large", "other"])
    assert created.secret.startswith("mg-" + created.key.id + "_")
    assert created.key.display_prefix == "mg-" + created.key.id
    assert await store.lookup(created.secret) == Principal(
        team_id="acme", key_id=created.key.id, scopes=frozenset({"admin", "inference"}),
        allowed_models=frozenset({"large"}))
    # A near miss, a foreign format, and an unknown id all fail the same way.
    assert await store.lookup(created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B")) \
        is None
    assert await store.lookup("sk-not-ours") is None
    assert await store.lookup("mg-0000000000000000_" + "x" * 43) is None


async def test_secret_is_never_stored_or_listed(backend):
    store = backend.open()
    await store.create_team("Acme", team_id="acme")
    created = await store.create_key("acme", name="ci")
    assert created.secret not in repr(created)
    listed = await store.list_keys("acme")
    assert listed == [created.key] == await store.list_keys()
    assert await store.get_key(created.key.id) == created.key
    assert not hasattr(listed[0], "secret")
    assert created.secret not in repr(listed)
    secret_part = created.secret.split("_", 1)[1]
    assert secret_part.encode() not in backend.raw_dump()


async def test_revoked_key_fails_everywhere_at_once(backend):
    first, second = backend.open(), backend.open()
    await first.create_team("Acme", team_id="acme")
    created = await first.create_key("acme")
    assert await second.lookup(created.secret) is not None
    revoked = await first.revoke_key(created.key.id)
    assert revoked.revoked_at is not None
    assert await second.lookup(created.secret) is None
    assert await first.lookup(created.secret) is None
    assert (await first.revoke_key(created.key.id)).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await first.revoke_key("0000000000000000")


async def test_rotation_grace_period(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    await store.create_team("Acme", team_id="acme")
    old = await store.create_key("acme", name="svc", rpm_limit=7, budget_usd="3")
    new = await store.rotate_key(old.key.id, grace_s=60)
    assert new.secret != old.secret
    assert (new.key.name, new.key.rpm_limit, new.key.budget_usd) == ("svc", 7, Decimal("3.000000"))
    assert (await store.get_key(old.key.id)).replaced_by == new.key.id

    clock.advance(59.9)
    assert await store.lookup(old.secret) is not None
    assert await store.lookup(new.secret) is not None
    clock.advance(0.1)
    assert await store.lookup(old.secret) is None
    assert await store.lookup(new.secret) is not None
    with pytest.raises(Conflict):
        await store.rotate_key(old.key.id, grace_s=60)

    immediate = await store.rotate_key(new.key.id)  # no grace: the old key fails at once
    assert await store.lookup(new.secret) is None
    assert await store.lookup(immediate.secret) is not None


async def test_expiring_key(backend):
    clock = FakeClock()
    store = backend.open(clock=clock)
    await store.create_team("Acme", team_id="acme")
    created = await store.create_key("acme", expires_at=clock.now + 10)
    assert await store.lookup(created.secret) is not None
    clock.advance(10)
    assert await store.lookup(created.secret) is None


async def test_deleting_a_team_revokes_its_keys(backend):
    store = backend.open()
    await store.create_team("Acme", team_id="acme")
    created = await store.create_key("acme")
    await store.delete_team("acme")
    assert await store.lookup(created.secret) is None
    assert (await store.get_key(created.key.id)).revoked_at is not None
    await store.create_team("Acme again", team_id="acme")
    assert await store.lookup(created.secret) is None  # a re-created team does not revive keys


async def test_pepper_must_match(backend):
    peppered = backend.open(pepper=b"server-side pepper")
    await peppered.create_team("Acme", team_id="acme")
    created = await peppered.create_key("acme")
    assert await peppered.lookup(created.secret) is not None
    assert await backend.open(pepper=b"another pepper").lookup(created.secret) is None
    assert await backend.open().lookup(created.secret) is None


async def test_imported_keys_from_config(backend):
    store = backend.open()
    await store.create_team("Acme", team_id="acme")
    yaml_secret = "mg-" + "Zq3" * 15                       # a key declared in YAML
    imported = await store.import_key("acme", yaml_secret, name="demo", rpm_limit=5)
    assert yaml_secret not in repr(imported) and imported.display_prefix == "mg-Zq3Z…"
    principal = await store.lookup(yaml_secret)
    assert (principal.team_id, principal.key_id) == ("acme", imported.id)
    assert (await store.reserve(principal, "small", 0, 1)).team_id == "acme"
    # Importing again at the next start-up is a no-op, also from another instance.
    assert await backend.open().import_key("acme", yaml_secret, name="demo") == imported
    assert len(await store.list_keys("acme")) == 1

    await store.revoke_key(imported.id)
    again = await store.import_key("acme", yaml_secret)
    assert again.revoked_at is not None                    # config cannot revive a revoked key
    assert await store.lookup(yaml_secret) is None
    assert yaml_secret[3:].encode() not in backend.raw_dump()

    await store.create_team("Beta", team_id="beta")
    with pytest.raises(Conflict):
        await store.import_key("beta", yaml_secret)
    with pytest.raises(InvalidInput):
        await store.import_key("acme", "too-short")
    with pytest.raises(NotFound):
        await store.import_key("ghost", "mg-" + "x" * 40)
