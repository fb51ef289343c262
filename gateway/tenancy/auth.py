"""Bearer-key authentication: a presented key becomes a Principal (team, key id, scopes).

With a store (the default) keys are looked up there (gateway/tenancy/wiring.py); this module holds what
both modes share (the Authorization header, secrets in files) and the store-less mode, where
only the config's keys are accepted. Keys are held only as SHA-256 hashes; a lookup hashes the
presented key and compares the digest in constant time, so neither the secret nor its timing
leaks.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from gateway.config import ConfigError, KeyConfig, TeamConfig
from gateway.http.errors import Unauthorized
from gateway.tenancy.keys import generate_key, key_digest
from gateway.store.records import Principal

__all__ = ["ConfigKeyAuthenticator", "Principal", "bearer_token", "read_or_create_secret", "resolve_key"]


def redact(secret: str) -> str:
    """What may be shown of a key: its first characters only."""
    return secret[:7] + "…" if len(secret) > 7 else "…"


def new_secret() -> str:
    """A fresh key in muxgate's format (its id is embedded, so the store finds it by id)."""
    return generate_key().secret


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized(
            "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer mg-…'.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Malformed Authorization header; expected 'Bearer <key>'.")
    return token.strip()


def resolve_key(cfg: KeyConfig) -> tuple[str, bool]:
    """The secret of a configured key, and whether it was just created (key_file missing)."""
    if cfg.key:
        return cfg.key, False
    if cfg.key_env:
        value = os.environ.get(cfg.key_env)
        if not value:
            raise ConfigError(f"keys: environment variable {cfg.key_env} is not set")
        return value, False
    return read_or_create_secret(cfg.key_file)


def read_or_create_secret(key_file: str | os.PathLike) -> tuple[str, bool]:
    """The secret in ``key_file``, creating the file (mode 0600) with a new key if missing."""
    path = Path(key_file)
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another gateway process created it first
        return path.read_text(encoding="utf-8").strip(), False
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret, True


class ConfigKeyAuthenticator:
    """Keys listed in the YAML config; each maps to its team."""

    def __init__(self, keys: list[tuple[Principal, str]]):
        self._by_hash = {key_digest(secret): principal for principal, secret in keys}

    @classmethod
    def from_config(cls, keys: list[KeyConfig], teams: list[TeamConfig] = ()) -> "ConfigKeyAuthenticator":
        """The config's keys, each a principal of its team with the team's `share` (1 for a team
        the config does not declare): without a store the YAML is where a team's weight lives."""
        shares = {t.id: t.share for t in teams}
        return cls([(Principal(team_id=k.team, key_id=f"{k.team}/{k.name}", scopes=frozenset({"inference"}),
                               allowed_models=None, share=shares.get(k.team, 1.0)), resolve_key(k)[0])
                    for k in keys])

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        digest = key_digest(token)
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthorized(f"Incorrect API key provided: {redact(token)}.")
