"""gateway/tenancy/keys.py, money and open_store: the pieces both backends build on."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.tenancy.keys import generate_key, hash_key, parse_key_id, verify_key
from gateway.store import InvalidInput, RedisStore, SQLiteStore, UsageRecord, open_store
from gateway.store.money import micros_to_usd, to_usd, usd_to_micros


def test_generated_keys_are_unique_prefixed_and_high_entropy():
    keys = [generate_key() for _ in range(200)]
    assert len({k.secret for k in keys}) == len({k.key_id for k in keys}) == 200
    key = keys[0]
    assert key.secret.startswith(f"mg-{key.key_id}_")
    assert key.display_prefix == f"mg-{key.key_id}"
    assert len(key.secret.split("_", 1)[1]) == 43          # 32 random bytes, base64url
    assert key.secret not in repr(key)
    assert parse_key_id(key.secret) == key.key_id
    for bad in ("", "mg-", "sk-abc", key.secret + "x", key.secret.upper(), None):
        assert parse_key_id(bad) is None


def test_hashes_are_tagged_and_verified_with_the_right_pepper():
    secret = generate_key().secret
    plain, peppered = hash_key(secret), hash_key(secret, b"pepper")
    assert plain.startswith("sha256:") and peppered.startswith("hmac-sha256:")
    assert secret not in plain and secret not in peppered
    assert verify_key(secret, plain) and verify_key(secret, peppered, b"pepper")
    assert not verify_key(secret, peppered)                  # pepper missing: fail closed
    assert not verify_key(secret, peppered, b"other")
    assert not verify_key(secret + "x", plain)


def test_money_is_exact():
    assert to_usd(0.1) + to_usd(0.2) == Decimal("0.3")
    assert usd_to_micros("0.0000015") == 2                  # half-even to the micro-dollar
    assert usd_to_micros("0.0000001", round_up=True) == 1   # worst cases never under-reserve
    assert micros_to_usd(1_234_567) == Decimal("1.234567")
    for bad in ("-1", "nan", "inf", "abc", None):
        with pytest.raises(InvalidInput):
            to_usd(bad)


def test_usage_record_normalises_money():
    record = UsageRecord("r1", 1.0, "t", "k", "a", "b", cost_usd=0.1, baseline_cost_usd="0.3",
                         gpu_seconds=0.12345678)
    assert (record.cost_usd, record.baseline_cost_usd) == (Decimal("0.1"), Decimal("0.3"))
    assert record.gpu_seconds == 0.123457
    assert UsageRecord.from_json_dict(record.to_json_dict()) == record
    with pytest.raises(InvalidInput):
        UsageRecord("has space", 1.0, "t", "k", "a", "b")


async def _close(store):
    await store.close()


def test_open_store_urls(tmp_path, monkeypatch):
    import asyncio

    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///var/muxgate.db")
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    redis_store = open_store("redis://127.0.0.1:1/3?prefix=team7:")
    try:
        assert isinstance(relative, SQLiteStore) and relative.path == "var/muxgate.db"
        assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/abs.db"
        assert isinstance(redis_store, RedisStore) and redis_store.prefix == "team7:"
    finally:
        for store in (relative, absolute, redis_store):
            asyncio.run(_close(store))
    for bad in ("sqlite://", "sqlite:///:memory:", "postgres://x/y", "memory"):
        with pytest.raises(InvalidInput):
            open_store(bad)


def test_both_backends_match_the_protocol():
    import inspect

    from gateway.store import Store

    methods = [n for n, v in vars(Store).items() if inspect.iscoroutinefunction(v)]
    assert len(methods) >= 18
    for impl in (SQLiteStore, RedisStore):
        for name in methods:
            want = inspect.signature(getattr(Store, name)).parameters
            have = inspect.signature(getattr(impl, name)).parameters
            assert [(p.name, p.kind, p.default) for p in have.values()] == \
                [(p.name, p.kind, p.default) for p in want.values()], (impl.__name__, name)
