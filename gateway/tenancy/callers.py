"""Who is calling: team keys looked up in the store (behind a short per-process cache) and the
admin key.

Revocation: a key revoked on any gateway fails here within the cache TTL (<= 0.5 s, so well
inside the 1 s promise); admission re-reads the key inside its atomic reservation, so a revoked
key is refused for inference even within that window. Lookups of the same key that arrive
together share one store round trip, so a burst of requests costs one read.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.tenancy.auth import bearer_token, redact
from gateway.http.errors import Forbidden, Unauthorized
from gateway.tenancy.keys import key_digest
from gateway.store import Principal, Store
from gateway.tenancy.errors import StoreDown, mapped_store_errors

INFERENCE_SCOPE = "inference"


@dataclass(frozen=True)
class Admin:
    """The caller holding the admin key: may read and change every team."""

    team_id: None = None


ADMIN = Admin()
Caller = Principal | Admin


class AdminKey:
    """The configured admin key, held as a digest and compared in constant time."""

    def __init__(self, secret: str | None):
        self._digest = key_digest(secret) if secret else None

    def matches(self, token: str, digest: str | None = None) -> bool:
        """Whether ``token`` (whose digest the caller may have at hand) is the admin key."""
        return self._digest is not None and hmac.compare_digest(self._digest, digest or key_digest(token))


class StoreAuthenticator:
    """Team keys from the store, with a TTL cache of lookups (hits and misses)."""

    def __init__(self, store: Store, admin: AdminKey, ttl_s: float = 0.5, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, open_grace_s: float = 0.0):
        self.store = store
        self.admin = admin
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.open_grace_s = open_grace_s  # > 0: fail open for keys verified this recently
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task] = {}

    async def lookup(self, token: str, digest: str | None = None) -> Principal | None:
        """The principal of a presented key, or None; at most ttl_s old."""
        digest = digest or key_digest(token)  # cache keys are digests: the cache never holds a secret
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        task = self._inflight.get(digest)
        if task is None:
            # Its own task: a caller that goes away must not cancel the read the others await.
            task = asyncio.ensure_future(self._fetch(token, digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda t: self._done(digest, t))
        return await asyncio.shield(task)

    async def _fetch(self, token: str, digest: str) -> Principal | None:
        try:
            with mapped_store_errors():
                principal = await self.store.lookup(token)
        except StoreDown:
            known = self._verified.get(digest)
            if self.open_grace_s and known is not None and known[0] > self._clock():
                return known[1]  # failing open: the store vouched for this key recently
            raise
        if principal is None:
            self._verified.pop(digest, None)  # revoked or deleted: never fail open for it
        elif self.open_grace_s:
            self._verified[digest] = (self._clock() + self.open_grace_s, principal)
            self._verified.move_to_end(digest)
            while len(self._verified) > self.max_entries:
                self._verified.popitem(last=False)
        if self.ttl_s > 0:
            self._cache[digest] = (self._clock() + self.ttl_s, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return principal

    def _done(self, digest: str, task: asyncio.Task) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone, nothing to log then

    async def caller(self, authorization: str | None) -> Caller:
        """The admin or a team principal; 401 for anything else."""
        token = bearer_token(authorization)
        digest = key_digest(token)  # once per request: the admin check and the key cache both use it
        if self.admin.matches(token, digest):
            return ADMIN
        principal = await self.lookup(token, digest)
        if principal is None:
            raise Unauthorized(f"Incorrect API key provided: {redact(token)}. The key may have been revoked.")
        return principal

    async def authenticate(self, authorization: str | None) -> Principal:
        """A team principal allowed to run inference (the completion path's auth)."""
        caller = await self.caller(authorization)
        if isinstance(caller, Admin):
            raise Forbidden("The admin key manages muxgate; use a team's key for inference.")
        if INFERENCE_SCOPE not in caller.scopes:
            raise Forbidden(f"This API key lacks the '{INFERENCE_SCOPE}' scope.")
        return caller

    async def require_admin(self, authorization: str | None) -> Admin:
        """Pass only the admin key (401 without a valid key, 403 for a team key)."""
        caller = await self.caller(authorization)
        if not isinstance(caller, Admin):
            raise Forbidden("This endpoint needs the admin key.")
        return caller


class ConfigCallers:
    """The store-less mode's callers: config keys for inference, the admin key for the pool view."""

    def __init__(self, authenticate, admin: AdminKey):
        self._authenticate = authenticate
        self.admin = admin

    async def authenticate(self, authorization: str | None) -> Principal:
        return await self._authenticate(authorization)

    async def caller(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        if self.admin.matches(token):
            return ADMIN
        return await self._authenticate(authorization)

    async def require_admin(self, authorization: str | None) -> Admin:
        caller = await self.caller(authorization)
        if not isinstance(caller, Admin):
            raise Forbidden("This endpoint needs the admin key.")
        return caller


def team_scope(caller: Caller, team: str | None) -> str | None:
    """The team a read is limited to: any (or ``team``) for the admin, its own for a team key."""
    if isinstance(caller, Admin):
        return team or None
    if team and team != caller.team_id:
        raise Forbidden("A team's key can only read its own team's data.")
    return caller.team_id
