"""Failed authentications are limited per presented key, and per client address only where a
trusted proxy tells it: wrong keys from behind one Ingress do not lock out everyone else."""

import httpx
import openai
import pytest

from gateway.tenancy.auth_limiter import FailedAuthLimiter
from gateway.config import ConfigError, parse_config
from gateway.http.errors import RateLimited
from support import KEY_ALPHA, make_config


class Clock:
    t = 1000.0

    def __call__(self):
        return self.t


def test_a_key_is_refused_after_too_many_failures_then_forgiven():
    clock = Clock()
    limiter = FailedAuthLimiter(max_failures=3, window_s=60, clock=clock)
    wrong = limiter.subjects("mg-wrong-0123456789abcdef", peer="10.0.0.1")
    for _ in range(3):
        limiter.check(wrong)
        limiter.record_failure(wrong)
    with pytest.raises(RateLimited) as info:
        limiter.check(wrong)
    assert 1 <= info.value.retry_after <= 60 and "this API key" in str(info.value)
    limiter.check(limiter.subjects(KEY_ALPHA, peer="10.0.0.1"))  # another key from the same address
    clock.t += 61
    limiter.check(wrong)  # the window slid past the failures


def test_a_key_id_seen_in_a_listing_cannot_lock_that_key_out():
    limiter = FailedAuthLimiter(max_failures=3)
    key_id = "mg-0123456789abcdef_"
    for i in range(10):
        guess = limiter.subjects(key_id + f"guess{i:040d}")
        limiter.check(guess)
        limiter.record_failure(guess)
    limiter.check(limiter.subjects(key_id + "the-real-secret-part-of-the-key-abcdefgh"))


def test_forwarded_for_is_believed_only_from_a_listed_proxy():
    limiter = FailedAuthLimiter(max_failures=2, trusted_proxies=["10.0.0.0/8"])
    assert limiter.client_address("10.1.2.3", "203.0.113.7, 10.9.9.9") == "203.0.113.7"
    assert limiter.client_address("203.0.113.50", "198.51.100.1") == "203.0.113.50"  # a direct client; no spoof
    assert limiter.client_address("10.1.2.3", "garbage, 203.0.113.7") == "203.0.113.7"
    assert limiter.client_address("10.1.2.3", "203.0.113.7, nonsense") is None
    assert FailedAuthLimiter().client_address("10.1.2.3", "203.0.113.7") is None  # none listed
    scanner = [limiter.subjects(f"mg-scan-{i:020d}", "10.1.2.3", "203.0.113.7") for i in range(3)]
    for s in scanner[:2]:
        limiter.record_failure(s)
    with pytest.raises(RateLimited, match="203.0.113.7"):
        limiter.check(scanner[2])  # a new key each time, but one client behind the proxy
    limiter.check(limiter.subjects(KEY_ALPHA, "10.1.2.3", "198.51.100.9"))  # its neighbours are fine


def test_zero_disables_and_memory_is_bounded():
    limiter = FailedAuthLimiter(max_failures=0)
    for _ in range(100):
        limiter.record_failure(["key:a"])
    limiter.check(["key:a"])
    bounded = FailedAuthLimiter(max_failures=5, max_subjects=10)
    for i in range(1000):
        bounded.record_failure([f"key:{i}"])
    assert len(bounded._failures) <= 10


def test_bad_trusted_proxies_are_refused_at_load(zoo_dir):
    with pytest.raises(ConfigError, match="trusted_proxies"):
        parse_config(make_config(zoo_dir, server={"trusted_proxies": ["10.0.0.0/33"]}))


def test_wrong_keys_from_one_address_leave_other_keys_working(zoo_dir, start_server):
    """All clients behind one proxy share its address; they used to be locked out together."""
    server = start_server(make_config(zoo_dir, server={"auth_failures_per_minute": 3, "default_max_tokens": 2}))
    for _ in range(4):
        r = httpx.get(server.base_url + "/v1/models", headers={"authorization": "Bearer mg-wrong-0123456789abcdef"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)
    assert client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": "hi"}]).choices
