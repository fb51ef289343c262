"""Teams and keys as flat Redis hashes (all values strings; '' stands for None)."""

from __future__ import annotations

import json

from gateway.store.money import optional_micros_to_usd, usd_to_micros
from gateway.store.records import ApiKey, Team


def _opt(value) -> str:
    return "" if value is None else str(value)


def _opt_int(value: str) -> int | None:
    return None if value in ("", None) else int(value)


def _opt_float(value: str) -> float | None:
    return None if value in ("", None) else float(value)


def _opt_micros(amount) -> str:
    return "" if amount is None else str(usd_to_micros(amount))


def team_fields(team: Team) -> dict[str, str]:
    """A Team as hash fields."""
    return {
        "id": team.id,
        "name": team.name,
        "budget_micros": _opt_micros(team.budget_usd),
        "budget_period": team.budget_period,
        "rpm_limit": _opt(team.rpm_limit),
        "tpm_limit": _opt(team.tpm_limit),
        "allowed_models": json.dumps(list(team.allowed_models)),
        "created_at": repr(team.created_at),
        "share": repr(team.share),
    }


def team_from_fields(h: dict[str, str]) -> Team:
    """Inverse of :func:`team_fields`. A hash written before teams had a share (no field) is an
    equal share, 1.0."""
    return Team(
        id=h["id"], name=h["name"],
        budget_usd=optional_micros_to_usd(_opt_int(h["budget_micros"])),
        budget_period=h["budget_period"], rpm_limit=_opt_int(h["rpm_limit"]),
        tpm_limit=_opt_int(h["tpm_limit"]), allowed_models=tuple(json.loads(h["allowed_models"])),
        created_at=float(h["created_at"]), share=float(h.get("share") or 1.0))


def key_fields(key: ApiKey, key_hash: str) -> dict[str, str]:
    """An ApiKey and the hash of its secret as hash fields."""
    return {
        "id": key.id,
        "team_id": key.team_id,
        "name": key.name,
        "hash": key_hash,
        "display_prefix": key.display_prefix,
        "scopes": json.dumps(list(key.scopes)),
        "allowed_models": json.dumps(list(key.allowed_models)),
        "budget_micros": _opt_micros(key.budget_usd),
        "budget_period": key.budget_period,
        "rpm_limit": _opt(key.rpm_limit),
        "tpm_limit": _opt(key.tpm_limit),
        "created_at": repr(key.created_at),
        "expires_at": "" if key.expires_at is None else repr(key.expires_at),
        "revoked_at": "" if key.revoked_at is None else repr(key.revoked_at),
        "replaced_by": _opt(key.replaced_by),
    }


def key_from_fields(h: dict[str, str]) -> ApiKey:
    """Inverse of :func:`key_fields` (the hash is not part of the record)."""
    return ApiKey(
        id=h["id"], team_id=h["team_id"], name=h["name"], display_prefix=h["display_prefix"],
        scopes=tuple(json.loads(h["scopes"])),
        allowed_models=tuple(json.loads(h["allowed_models"])),
        budget_usd=optional_micros_to_usd(_opt_int(h["budget_micros"])),
        budget_period=h["budget_period"], rpm_limit=_opt_int(h["rpm_limit"]),
        tpm_limit=_opt_int(h["tpm_limit"]), created_at=float(h["created_at"]),
        expires_at=_opt_float(h["expires_at"]), revoked_at=_opt_float(h["revoked_at"]),
        replaced_by=h["replaced_by"] or None)


def flatten(fields: dict[str, str]) -> list[str]:
    """{'a': '1', 'b': '2'} -> ['a', '1', 'b', '2'] for HSET inside a script."""
    return [item for pair in fields.items() for item in pair]


def pairs_to_dict(flat: list[str]) -> dict[str, str]:
    """['a', '1', 'b', '2'] -> {'a': '1', 'b': '2'} for HGETALL returned by a script."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))
