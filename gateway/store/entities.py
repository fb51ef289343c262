"""Building, updating and authenticating teams and keys: backend-independent rules.

Both stores call these so validation, defaults, rotation semantics and the principal a key
yields are defined once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import replace

from gateway.tenancy.keys import GeneratedKey, display_prefix, generate_key, parse_key_id, verify_key
from gateway.store.errors import InvalidInput
from gateway.store.money import optional_micros_to_usd
from gateway.store.records import UNSET, ApiKey, Principal, Team
from gateway.store.validation import (
    check_budget_micros,
    check_id,
    check_limit,
    check_model,
    check_models,
    check_name,
    check_period,
    check_scopes,
    check_seconds,
    check_share,
    check_tokens,
)


def new_team(name: str, *, team_id: str | None, budget_usd, budget_period: str,
             rpm_limit: int | None, tpm_limit: int | None, allowed_models: Iterable[str],
             now: float, share: float = 1.0) -> Team:
    """A validated Team record; the id defaults to ``team_<random>``."""
    return Team(
        id=check_id(team_id, "team id") if team_id is not None else "team_" + secrets.token_hex(6),
        name=check_name(name),
        budget_usd=optional_micros_to_usd(check_budget_micros(budget_usd)),
        budget_period=check_period(budget_period),
        rpm_limit=check_limit(rpm_limit, "rpm_limit"),
        tpm_limit=check_limit(tpm_limit, "tpm_limit"),
        allowed_models=check_models(allowed_models),
        created_at=now,
        share=check_share(share),
    )


def updated_team(team: Team, *, name=UNSET, budget_usd=UNSET, budget_period=UNSET,
                 rpm_limit=UNSET, tpm_limit=UNSET, allowed_models=UNSET, share=UNSET) -> Team:
    """``team`` with the given fields changed (UNSET = keep, None = unlimited), validated."""
    changes = {}
    if name is not UNSET:
        changes["name"] = check_name(name)
    if budget_usd is not UNSET:
        changes["budget_usd"] = optional_micros_to_usd(check_budget_micros(budget_usd))
    if budget_period is not UNSET:
        changes["budget_period"] = check_period(budget_period)
    if rpm_limit is not UNSET:
        changes["rpm_limit"] = check_limit(rpm_limit, "rpm_limit")
    if tpm_limit is not UNSET:
        changes["tpm_limit"] = check_limit(tpm_limit, "tpm_limit")
    if allowed_models is not UNSET:
        changes["allowed_models"] = check_models(allowed_models)
    if share is not UNSET:
        changes["share"] = check_share(share)
    return replace(team, **changes)


# Keys declared in YAML are chosen by people (and by tests); 20 characters still rules out
# passwords typed by hand, while keys muxgate generates carry 256 random bits.
MIN_IMPORTED_SECRET_LENGTH = 20


def imported_secret(secret: str) -> GeneratedKey:
    """Wrap a secret chosen elsewhere (e.g. a key declared in YAML) like a generated one.

    A secret in muxgate's own format keeps its embedded id, so it is found by id; any other
    format gets a random id and is found by its hash.
    """
    if (not isinstance(secret, str) or len(secret) < MIN_IMPORTED_SECRET_LENGTH
            or not secret.isprintable() or any(c.isspace() for c in secret)):
        raise InvalidInput(f"an imported key must be at least {MIN_IMPORTED_SECRET_LENGTH} "
                           "printable characters without spaces")
    key_id = parse_key_id(secret)
    if key_id is not None:
        return GeneratedKey(key_id=key_id, display_prefix=display_prefix(key_id), secret=secret)
    return GeneratedKey(key_id=secrets.token_hex(8), display_prefix=secret[:7] + "…",
                        secret=secret)


def new_key(team_id: str, *, name: str, scopes: Iterable[str], allowed_models: Iterable[str],
            budget_usd, budget_period: str, rpm_limit: int | None, tpm_limit: int | None,
            expires_at: float | None, now: float,
            secret: str | None = None) -> tuple[GeneratedKey, ApiKey]:
    """The secret (fresh, or ``secret`` when importing) and the validated ApiKey record."""
    generated = generate_key() if secret is None else imported_secret(secret)
    record = ApiKey(
        id=generated.key_id,
        team_id=check_id(team_id, "team id"),
        name=check_name(name),
        display_prefix=generated.display_prefix,
        scopes=check_scopes(scopes),
        allowed_models=check_models(allowed_models),
        budget_usd=optional_micros_to_usd(check_budget_micros(budget_usd)),
        budget_period=check_period(budget_period),
        rpm_limit=check_limit(rpm_limit, "rpm_limit"),
        tpm_limit=check_limit(tpm_limit, "tpm_limit"),
        created_at=now,
        expires_at=None if expires_at is None else check_seconds(expires_at, "expires_at"),
        revoked_at=None,
        replaced_by=None,
    )
    return generated, record


def rotated_key(old: ApiKey, *, now: float) -> tuple[GeneratedKey, ApiKey]:
    """The replacement for ``old``: same team, scopes and limits, a new id and secret."""
    generated = generate_key()
    return generated, replace(old, id=generated.key_id, display_prefix=generated.display_prefix,
                              created_at=now, expires_at=None, revoked_at=None, replaced_by=None)


def grace_end(old: ApiKey, grace_s: float, now: float) -> float:
    """When a rotated key stops working; rotation never extends an earlier expiry."""
    end = now + check_seconds(grace_s, "grace_s")
    return end if old.expires_at is None else min(end, old.expires_at)


def principal_for(team: Team, key: ApiKey) -> Principal:
    """The caller identity a key yields: scopes, the team ∩ key model allow-list and the
    team's fair-share weight."""
    if team.allowed_models and key.allowed_models:
        allowed: frozenset[str] | None = frozenset(team.allowed_models) & frozenset(
            key.allowed_models)
    elif team.allowed_models or key.allowed_models:
        allowed = frozenset(team.allowed_models or key.allowed_models)
    else:
        allowed = None
    return Principal(team_id=team.id, key_id=key.id, scopes=frozenset(key.scopes),
                     allowed_models=allowed, share=team.share)


def key_id_of(secret: str) -> str | None:
    """The record id a presented key in muxgate's format points at; None for other formats,
    which are looked up by hash (imported keys)."""
    return parse_key_id(secret)


def authenticate(secret: str, stored_hash: str | None, key: ApiKey | None, team: Team | None,
                 pepper: bytes | None, now: float) -> Principal | None:
    """Final lookup decision once a backend has fetched the key record, its hash and its team."""
    if key is None or stored_hash is None or team is None:
        return None
    if not verify_key(secret, stored_hash, pepper):
        return None
    if not key.is_active(now) or key.team_id != team.id:
        return None
    return principal_for(team, key)


def check_reserve_args(model: str, worst_case_tokens: int) -> None:
    """Shared argument checks of ``reserve`` beyond the money conversion."""
    check_model(model)
    check_tokens(worst_case_tokens)


def checked_pepper(pepper: bytes | str | None) -> bytes | None:
    """Accept the pepper as bytes or text."""
    if pepper is None or pepper == b"" or pepper == "":
        return None
    if isinstance(pepper, str):
        return pepper.encode("utf-8")
    if isinstance(pepper, bytes):
        return pepper
    raise InvalidInput("pepper must be bytes or str")
