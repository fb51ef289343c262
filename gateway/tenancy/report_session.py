"""Signed sessions for the HTML report page: the browser keeps a cookie that is not the key.

A browser cannot send an Authorization header to /reports, so signing in (a POSTed form) sets a
cookie. It names the caller (the admin, or a key by its public id), an expiry and an HMAC-SHA256
over both; it never holds the secret. Each page load checks the signature and the expiry, then
re-reads the key, so a revoked or expired key's session ends at once.

The signing secret is `$MUXGATE_SESSION_SECRET` when set (give every gateway the same one), else
derived from the admin key (shared by every gateway of a fleet; rotating it ends all sessions),
else random per process (sessions then work only on the gateway that issued them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

from gateway.tenancy.callers import ADMIN, Admin, Caller
from gateway.store.entities import principal_for

SESSION_TTL_S = 8 * 3600
SECRET_ENV = "MUXGATE_SESSION_SECRET"
_VERSION = "v1"


def session_secret(admin_key: str | None) -> bytes:
    """The HMAC key for report sessions (see the module docstring for the order)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode("utf-8")
    if admin_key:
        return hmac.new(admin_key.encode("utf-8"), b"muxgate report sessions v1", hashlib.sha256).digest()
    return secrets.token_bytes(32)


class ReportSessions:
    def __init__(self, secret: bytes, ttl_s: float = SESSION_TTL_S, clock=time.time):
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def issue(self, caller: Caller) -> str:
        subject = "admin" if isinstance(caller, Admin) else f"key:{caller.key_id}"
        payload = f"{_VERSION}.{subject}.{int(self._clock() + self.ttl_s)}"
        return f"{payload}.{self._sign(payload)}"

    def subject(self, cookie: str) -> str | None:
        """The signed subject ("admin" or "key:<id>") of a valid, unexpired cookie; else None."""
        payload, _, signature = cookie.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        if int(parts[2]) <= self._clock():
            return None
        return parts[1]

    async def caller(self, cookie: str, store) -> Caller | None:
        """The caller a cookie stands for, re-checked against the store; None when it is not valid
        or its key is no longer active."""
        subject = self.subject(cookie)
        if subject == "admin":
            return ADMIN
        if subject is None or not subject.startswith("key:"):
            return None
        key = await store.get_key(subject.removeprefix("key:"))
        if key is None or not key.is_active(self._clock()):
            return None
        team = await store.get_team(key.team_id)
        return principal_for(team, key) if team is not None else None
