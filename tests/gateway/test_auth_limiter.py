"""Failed authentications are limited per client address, in a sliding window."""

import pytest

from gateway.auth_limiter import FailedAuthLimiter
from gateway.errors import RateLimited


class Clock:
    t = 1000.0

    def __call__(self):
        return self.t


def test_an_address_is_refused_after_too_many_failures_then_forgiven():
    clock = Clock()
    limiter = FailedAuthLimiter(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.record_failure("10.0.0.1")
    with pytest.raises(RateLimited) as info:
        limiter.check("10.0.0.1")
    assert 1 <= info.value.retry_after <= 60
    limiter.check("10.0.0.2")  # other addresses are unaffected
    clock.t += 61
    limiter.check("10.0.0.1")  # the window slid past the failures


def test_zero_disables_and_memory_is_bounded():
    limiter = FailedAuthLimiter(max_failures=0)
    for _ in range(100):
        limiter.record_failure("a")
    limiter.check("a")
    bounded = FailedAuthLimiter(max_failures=5, max_addresses=10)
    for i in range(1000):
        bounded.record_failure(f"addr-{i}")
    assert len(bounded._failures) <= 10
