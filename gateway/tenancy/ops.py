"""Team and key administration, shared by the admin API (gateway/tenancy/admin.py) and the CLI
(`muxgate teams|keys`, gateway/tenancy/admin_cli.py): one input schema, one set of operations, one JSON
shape, so the two can never drift apart.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Literal

from pydantic import Field, ValidationError

from gateway.http.errors import BadRequest, NotFound
from gateway.store import UNSET, ApiKey, CreatedKey, Spend, Store, Team
from gateway.tenancy.errors import mapped_store_errors
from policies.schema import Strict

Period = Literal["daily", "monthly", "total"]


class TeamCreate(Strict):
    id: str | None = Field(None, description="Team id; default: a random id.")
    name: str = Field(description="Display name.")
    budget_usd: Decimal | None = Field(None, ge=0, description="Budget per period; null: unlimited.")
    budget_period: Period = "monthly"
    rpm_limit: int | None = Field(None, ge=1)
    tpm_limit: int | None = Field(None, ge=1)
    allowed_models: list[str] = Field(default_factory=list, description="Empty: every model.")
    share: float = Field(1.0, gt=0, description="Weight in each replica's fair queue.")


class TeamUpdate(Strict):
    """Only the fields present change; null means unlimited."""

    name: str | None = None
    budget_usd: Decimal | None = Field(None, ge=0)
    budget_period: Period | None = None
    rpm_limit: int | None = Field(None, ge=1)
    tpm_limit: int | None = Field(None, ge=1)
    allowed_models: list[str] | None = None
    share: float | None = Field(None, gt=0)


class KeyCreate(Strict):
    team: str = Field(description="Team the key belongs to.")
    name: str = ""
    scopes: list[str] = Field(default_factory=lambda: ["inference"])
    allowed_models: list[str] = Field(default_factory=list, description="Narrows the team's list; empty: the team's.")
    budget_usd: Decimal | None = Field(None, ge=0)
    budget_period: Period = "monthly"
    rpm_limit: int | None = Field(None, ge=1)
    tpm_limit: int | None = Field(None, ge=1)
    expires_at: float | None = Field(None, description="Epoch seconds after which the key fails.")


class KeyRotate(Strict):
    grace_s: float = Field(0.0, ge=0, le=30 * 86400, description="How long the old key keeps working.")


def parse_input(model: type[Strict], data: object) -> Strict:
    """Validate an admin request body (or CLI arguments) into ``model``; 400 naming the field."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        message = (f"Unrecognized argument: {loc}" if err["type"] == "extra_forbidden"
                   else f"Invalid value for '{loc}': {err['msg']}.")
        raise BadRequest(message, param=loc or None, code="invalid_request") from None


def money(value: Decimal | None) -> float | None:
    """Dollars as a JSON number (exact to the micro-dollar the store keeps)."""
    return None if value is None else float(value)


def team_json(team: Team, spend: Spend | None = None) -> dict:
    out = {"object": "team", "id": team.id, "name": team.name, "budget_usd": money(team.budget_usd),
           "budget_period": team.budget_period, "rpm_limit": team.rpm_limit, "tpm_limit": team.tpm_limit,
           "allowed_models": list(team.allowed_models), "share": team.share, "created_at": team.created_at}
    if spend is not None:
        out["spend"] = spend_json(spend)
    return out


def spend_json(spend: Spend) -> dict:
    return {"object": "spend", "team": spend.team_id, "budget_period": spend.budget_period,
            "period_start": spend.period_start, "period_end": spend.period_end,
            "budget_usd": money(spend.budget_usd), "spent_usd": money(spend.spent_usd),
            "reserved_usd": money(spend.reserved_usd), "remaining_usd": money(spend.remaining_usd)}


def key_json(key: ApiKey, now: float | None = None) -> dict:
    """A key without its secret (which the store does not have)."""
    return {"object": "api_key", "id": key.id, "team": key.team_id, "name": key.name,
            "display_prefix": key.display_prefix, "scopes": list(key.scopes),
            "allowed_models": list(key.allowed_models), "budget_usd": money(key.budget_usd),
            "budget_period": key.budget_period, "rpm_limit": key.rpm_limit, "tpm_limit": key.tpm_limit,
            "created_at": key.created_at, "expires_at": key.expires_at, "revoked_at": key.revoked_at,
            "replaced_by": key.replaced_by, "active": key.is_active(time.time() if now is None else now)}


def created_key_json(created: CreatedKey) -> dict:
    """A new key with its secret: the only time the secret is ever shown."""
    return {**key_json(created.key), "secret": created.secret}


class TenancyOps:
    """The operations behind both the admin API and the CLI."""

    def __init__(self, store: Store):
        self.store = store

    async def create_team(self, body: dict) -> dict:
        spec = parse_input(TeamCreate, body)
        with mapped_store_errors():
            team = await self.store.create_team(
                spec.name, team_id=spec.id, budget_usd=spec.budget_usd, budget_period=spec.budget_period,
                rpm_limit=spec.rpm_limit, tpm_limit=spec.tpm_limit, allowed_models=spec.allowed_models,
                share=spec.share)
        return team_json(team)

    async def list_teams(self) -> dict:
        with mapped_store_errors():
            teams = await self.store.list_teams()
        return {"object": "list", "data": [team_json(t) for t in teams]}

    async def get_team(self, team_id: str) -> dict:
        """The team and its budget position in the current period."""
        with mapped_store_errors():
            team = await self.store.get_team(team_id)
            if team is None:
                raise NotFound(f"team {team_id!r} not found")
            return team_json(team, await self.store.spend(team_id))

    async def update_team(self, team_id: str, body: dict) -> dict:
        spec = parse_input(TeamUpdate, body)
        changes = {name: getattr(spec, name) for name in spec.model_fields_set}
        for name in ("name", "budget_period", "allowed_models", "share"):
            if name in changes and changes[name] is None:
                raise BadRequest(f"'{name}' cannot be null.", param=name, code="invalid_request")
        with mapped_store_errors():
            team = await self.store.update_team(team_id, **{k: changes.get(k, UNSET) for k in (
                "name", "budget_usd", "budget_period", "rpm_limit", "tpm_limit", "allowed_models", "share")})
        return team_json(team)

    async def delete_team(self, team_id: str) -> dict:
        with mapped_store_errors():
            await self.store.delete_team(team_id)
        return {"object": "team.deleted", "id": team_id, "deleted": True}

    async def create_key(self, body: dict) -> dict:
        spec = parse_input(KeyCreate, body)
        with mapped_store_errors():
            created = await self.store.create_key(
                spec.team, name=spec.name, scopes=spec.scopes, allowed_models=spec.allowed_models,
                budget_usd=spec.budget_usd, budget_period=spec.budget_period, rpm_limit=spec.rpm_limit,
                tpm_limit=spec.tpm_limit, expires_at=spec.expires_at)
        return created_key_json(created)

    async def list_keys(self, team_id: str | None = None) -> dict:
        with mapped_store_errors():
            keys = await self.store.list_keys(team_id)
        return {"object": "list", "data": [key_json(k) for k in keys]}

    async def get_key(self, key_id: str) -> ApiKey:
        """The stored key record (404 if missing)."""
        with mapped_store_errors():
            key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(f"key {key_id!r} not found")
        return key

    async def revoke_key(self, key_id: str) -> dict:
        with mapped_store_errors():
            return key_json(await self.store.revoke_key(key_id))

    async def rotate_key(self, key_id: str, body: dict | None = None) -> dict:
        spec = parse_input(KeyRotate, body or {})
        with mapped_store_errors():
            created = await self.store.rotate_key(key_id, grace_s=spec.grace_s)
        return created_key_json(created)

    async def spend(self, team_id: str) -> dict:
        with mapped_store_errors():
            return spend_json(await self.store.spend(team_id))
