"""Settings of the reliability tests' shared gateway (imported by conftest.py and the tests)."""

from __future__ import annotations

BODY_TIMEOUT_S = 2.0
AUTH_FAILURES_PER_MINUTE = 20
# The network as an operator would describe it: a proxy (TEST-NET, never a peer here), so the
# loopback peers are direct clients whose addresses the failed-auth limit counts.
TRUSTED_PROXIES = ["192.0.2.1/32"]
# A request that never gets a token fails with 503 after this long instead of hanging.
FIRST_TOKEN_TIMEOUT_S = 3.0


def server_options() -> dict:
    """The server section's reliability settings."""
    return {"stream_first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S, "body_read_timeout_s": BODY_TIMEOUT_S,
            "auth_failures_per_minute": AUTH_FAILURES_PER_MINUTE, "trusted_proxies": TRUSTED_PROXIES}
