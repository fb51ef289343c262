"""Row <-> record mapping for SQLiteStore (money as integer micro-dollars, lists as JSON)."""

from __future__ import annotations

import json
import sqlite3

from gateway.store.money import micros_to_usd, optional_micros_to_usd, usd_to_micros
from gateway.store.records import ApiKey, Team, UsageRecord


def micros_or_none(amount) -> int | None:
    """Dollars -> micro-dollars, None (unlimited) passed through."""
    return None if amount is None else usd_to_micros(amount)


def team_from_row(row: sqlite3.Row) -> Team:
    """A ``teams`` row as a Team."""
    return Team(id=row["id"], name=row["name"],
                budget_usd=optional_micros_to_usd(row["budget_micros"]),
                budget_period=row["budget_period"], rpm_limit=row["rpm_limit"],
                tpm_limit=row["tpm_limit"], allowed_models=tuple(json.loads(row["allowed_models"])),
                created_at=row["created_at"], share=row["share"])


def team_values(team: Team) -> tuple:
    """A Team as the values of a ``teams`` row, in column order."""
    return (team.id, team.name, micros_or_none(team.budget_usd), team.budget_period,
            team.rpm_limit, team.tpm_limit, json.dumps(team.allowed_models), team.created_at,
            team.share)


def key_from_row(row: sqlite3.Row) -> ApiKey:
    """An ``api_keys`` row as an ApiKey (the hash stays behind)."""
    return ApiKey(id=row["id"], team_id=row["team_id"], name=row["name"],
                  display_prefix=row["display_prefix"], scopes=tuple(json.loads(row["scopes"])),
                  allowed_models=tuple(json.loads(row["allowed_models"])),
                  budget_usd=optional_micros_to_usd(row["budget_micros"]),
                  budget_period=row["budget_period"], rpm_limit=row["rpm_limit"],
                  tpm_limit=row["tpm_limit"], created_at=row["created_at"],
                  expires_at=row["expires_at"], revoked_at=row["revoked_at"],
                  replaced_by=row["replaced_by"])


def insert_key(conn: sqlite3.Connection, key: ApiKey, key_hash: str) -> None:
    """Insert an ApiKey with the hash of its secret."""
    conn.execute(
        "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key.id, key.team_id, key.name, key_hash, key.display_prefix, json.dumps(key.scopes),
         json.dumps(key.allowed_models), micros_or_none(key.budget_usd), key.budget_period,
         key.rpm_limit, key.tpm_limit, key.created_at, key.expires_at, key.revoked_at,
         key.replaced_by))


def record_from_row(row: sqlite3.Row) -> UsageRecord:
    """A ``usage_records`` row as a UsageRecord."""
    return UsageRecord(
        request_id=row["request_id"], time=row["time"], team_id=row["team_id"],
        key_id=row["key_id"], requested_model=row["requested_model"],
        routed_model=row["routed_model"], route_reason=row["route_reason"],
        route_score=row["route_score"], prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], cost_usd=micros_to_usd(row["cost_micros"]),
        baseline_cost_usd=micros_to_usd(row["baseline_micros"]), gpu_seconds=row["gpu_seconds"],
        latency_ms=row["latency_ms"], ttft_ms=row["ttft_ms"], status=row["status"],
        tool_calls=row["tool_calls"], constrained=row["constrained"])
