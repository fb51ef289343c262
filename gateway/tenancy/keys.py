"""API keys: generation, parsing, hashing and constant-time verification.

A key looks like ``mg-<key_id>_<secret>``:

- ``key_id`` is 16 hex characters, public. It names the stored record, so a lookup is one read
  by primary key and never a scan over hashes. It is also the display prefix shown in listings.
- ``secret`` is 32 random bytes from :mod:`secrets`, URL-safe base64 (43 characters).

Only a hash of the whole presented key is stored: HMAC-SHA256 with a server-side pepper when one
is configured, plain SHA-256 otherwise. The hash carries its algorithm as a tag
(``hmac-sha256:…`` / ``sha256:…``) so a store written without a pepper is not silently read
with one (and vice versa): a mismatch fails closed. A slow KDF (bcrypt, argon2) is unnecessary
because the secret has 256 bits of entropy; a fast hash keeps the per-request lookup cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

KEY_PREFIX = "mg-"
KEY_ID_BYTES = 8
SECRET_BYTES = 32

_KEY_RE = re.compile(r"^mg-([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class GeneratedKey:
    """A freshly generated key. ``secret`` is the full string the client presents."""

    key_id: str
    display_prefix: str
    secret: str = field(repr=False)


def generate_key() -> GeneratedKey:
    """Generate a new API key with a random public id and a 256-bit secret."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    secret_part = secrets.token_urlsafe(SECRET_BYTES)
    return GeneratedKey(
        key_id=key_id,
        display_prefix=display_prefix(key_id),
        secret=f"{KEY_PREFIX}{key_id}_{secret_part}",
    )


def display_prefix(key_id: str) -> str:
    """The part of a key that is safe to show in listings and logs."""
    return f"{KEY_PREFIX}{key_id}"


def parse_key_id(presented: str) -> str | None:
    """Return the key id embedded in a presented key, or None if it is not a muxgate key."""
    match = _KEY_RE.match(presented) if isinstance(presented, str) else None
    return match.group(1) if match else None


def key_digest(presented: str) -> str:
    """SHA-256 (hex) of a presented key or token: what muxgate holds of a secret in memory (config
    keys, the admin key, cache keys, the failed-auth limiter's subjects) and, tagged, in a store
    without a pepper. One function, so every place hashes a key the same way."""
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()


def hash_key(presented: str, pepper: bytes | None = None) -> str:
    """Hash a presented key for storage; the result is tagged with its algorithm."""
    if pepper:
        return "hmac-sha256:" + hmac.new(pepper, presented.encode("utf-8"), hashlib.sha256).hexdigest()
    return "sha256:" + key_digest(presented)


def verify_key(presented: str, stored_hash: str, pepper: bytes | None = None) -> bool:
    """Check a presented key against a stored hash in constant time."""
    if not isinstance(presented, str) or not isinstance(stored_hash, str):
        return False
    return hmac.compare_digest(hash_key(presented, pepper).encode(), stored_hash.encode())

