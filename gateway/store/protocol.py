"""The one Store protocol. SQLiteStore (embedded) and RedisStore (shared) both implement it and
both pass the same contract suite (tests/gateway/store/).

Conventions shared by every method:
- Times are epoch seconds; reports also accept datetimes. The store's injectable clock supplies
  "now" unless a method takes an explicit ``now``.
- Money goes in as Decimal/float/int/str dollars and comes out as Decimal with micro-dollar
  precision; it is stored as integer micro-dollars.
- ``get_*`` returns None for a missing record; mutations of a missing record raise NotFound.
- Backend outages raise StoreUnavailable (retryable); bad arguments raise InvalidInput.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from policies.outcome import Outcome

from gateway.store.outcomes import RoutedRequest
from gateway.store.records import (
    UNSET,
    ApiKey,
    CreatedKey,
    Denial,
    Principal,
    Reservation,
    Spend,
    Team,
    UsageRecord,
    UsageRow,
)

Money = Decimal | float | int | str
TimeArg = datetime | float


@runtime_checkable
class Store(Protocol):
    """Teams, keys, admission (reserve/settle), the usage ledger and its reports."""

    # --- teams -------------------------------------------------------------------------------

    async def create_team(self, name: str, *, team_id: str | None = None,
                          budget_usd: Money | None = None, budget_period: str = "monthly",
                          rpm_limit: int | None = None, tpm_limit: int | None = None,
                          allowed_models: Iterable[str] = (), share: float = 1.0) -> Team:
        """Create a team; ``team_id`` defaults to a random id. Raises Conflict if it exists.
        ``share``: its weight in the replicas' fair queue (finite, > 0)."""
        ...

    async def get_team(self, team_id: str) -> Team | None:
        """The team, or None."""
        ...

    async def list_teams(self) -> list[Team]:
        """All teams, oldest first."""
        ...

    async def update_team(self, team_id: str, *, name: str = UNSET,
                          budget_usd: Money | None = UNSET, budget_period: str = UNSET,
                          rpm_limit: int | None = UNSET, tpm_limit: int | None = UNSET,
                          allowed_models: Iterable[str] = UNSET, share: float = UNSET) -> Team:
        """Change the given fields (None = unlimited); returns the new team. NotFound if missing."""
        ...

    async def delete_team(self, team_id: str) -> None:
        """Delete a team and revoke all its keys in the same atomic step. Its ledger stays."""
        ...

    # --- keys --------------------------------------------------------------------------------

    async def create_key(self, team_id: str, *, name: str = "",
                         scopes: Iterable[str] = ("inference",),
                         allowed_models: Iterable[str] = (), budget_usd: Money | None = None,
                         budget_period: str = "monthly", rpm_limit: int | None = None,
                         tpm_limit: int | None = None,
                         expires_at: float | None = None) -> CreatedKey:
        """Create a key for a team. The secret is in the result and nowhere else, ever."""
        ...

    async def import_key(self, team_id: str, secret: str, *, name: str = "",
                         scopes: Iterable[str] = ("inference",), allowed_models: Iterable[str] = (),
                         budget_usd: Money | None = None, budget_period: str = "monthly",
                         rpm_limit: int | None = None, tpm_limit: int | None = None) -> ApiKey:
        """Store a key whose secret was chosen elsewhere (a key declared in YAML), so it gets the
        same lookup, budgets and limits as created keys. Idempotent: if this secret is already
        stored for the team, the stored record is returned unchanged (a revoked key stays
        revoked). Secrets of >= 20 characters only. Conflict if stored for another team."""
        ...

    async def get_key(self, key_id: str) -> ApiKey | None:
        """The key record (no secret), or None."""
        ...

    async def list_keys(self, team_id: str | None = None) -> list[ApiKey]:
        """Keys of one team or of all teams, oldest first, revoked ones included. No secrets."""
        ...

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key now; every process's next lookup fails. Idempotent."""
        ...

    async def rotate_key(self, key_id: str, *, grace_s: float = 0.0) -> CreatedKey:
        """Create a replacement key with the same team, scopes and limits; the old key keeps
        working for ``grace_s`` seconds, then fails. Conflict if the old key is not active."""
        ...

    async def lookup(self, secret: str) -> Principal | None:
        """Authenticate a presented key: Principal if it is active and its team exists."""
        ...

    # --- admission -----------------------------------------------------------------------------

    async def reserve(self, principal: Principal, model: str, worst_case_cost_usd: Money,
                      worst_case_tokens: int, *, now: float | None = None,
                      request_id: str | None = None) -> Reservation | Denial:
        """Atomically check and take team/key budget, RPM and TPM for one request.

        All-or-nothing: on Denial nothing is taken. Budgets count settled spend plus unexpired
        reservations of the current period. The reservation expires after the store's
        ``reservation_ttl_s`` if never settled. ``request_id`` (default: random) becomes the
        reservation id and must be the UsageRecord's request_id at settlement.
        """
        ...

    async def settle(self, reservation: Reservation, record: UsageRecord) -> bool:
        """Atomically release the reservation, charge the actual cost to the reservation's
        budget periods, refund unused worst-case tokens to TPM, append the record to the ledger
        and update the hourly rollups. Returns False (and changes nothing) if already settled."""
        ...

    async def take_tokens(self, reservation: Reservation, tokens: int, *,
                          now: float | None = None) -> Reservation | Denial:
        """Atomically take ``tokens`` more from the team's and the key's TPM for a reservation
        (admission reserved on an estimate; the real prompt count is larger), both or neither.
        Returns the reservation holding the new total, or the Denial of the limit it exceeds;
        refused, the request is not to run: what the reservation held goes back to both limits
        in the same step (settle it as holding no tokens)."""
        ...

    async def renew(self, reservations: Sequence[Reservation], *, now: float | None = None) -> int:
        """Push each reservation's expiry to ``reservation_ttl_s`` from now (a request still
        running outlives its first ttl). One already expired or settled stays released. Returns
        how many were renewed."""
        ...

    # --- reports -------------------------------------------------------------------------------

    async def usage_report(self, start: TimeArg, end: TimeArg, group_by: Sequence[str] = (), *,
                           team_id: str | None = None) -> list[UsageRow]:
        """Sums from the hourly rollups of the hours overlapping [start, end), grouped by any of
        "team", "key", "model" (routed), "requested_model", "day", "hour"."""
        ...

    async def usage_records(self, start: TimeArg, end: TimeArg, *, team_id: str | None = None,
                            limit: int = 1000) -> list[UsageRecord]:
        """Raw ledger records with start <= time < end, oldest first, at most ``limit``."""
        ...

    async def spend(self, team_id: str, *, now: float | None = None) -> Spend:
        """The team's budget position in its current period. NotFound if missing."""
        ...

    # --- routing outcomes: what the router learns from -----------------------------------------

    async def record_routed(self, request: RoutedRequest) -> bool:
        """Keep an `auto`-routed request (features, pair, tier; text only if the team opted in).
        Idempotent per request id: False, and nothing changes, if it is already kept."""
        ...

    async def record_routed_many(self, requests: list[RoutedRequest]) -> int:
        """``record_routed`` for many in one transaction (pipeline); how many were new."""
        ...

    async def routed_request(self, team_id: str, request_id: str) -> RoutedRequest | None:
        """The team's routed request, or None: unknown, or another team's (indistinguishable)."""
        ...

    async def set_other_answer(self, team_id: str, request_id: str, answer: str) -> bool:
        """Keep the other tier's answer from a shadow evaluation; False if the request is unknown."""
        ...

    async def routed_requests(self, start: TimeArg, end: TimeArg, *, team_id: str | None = None,
                              limit: int = 1000) -> list[RoutedRequest]:
        """Routed requests with start <= time < end, oldest first, at most ``limit``."""
        ...

    async def record_outcome(self, outcome: Outcome) -> None:
        """Keep one label (policies.outcome.Outcome). One per request id and source: a later
        one replaces the earlier (a second feedback score replaces the first)."""
        ...

    async def outcomes(self, start: TimeArg, end: TimeArg, *, team_id: str | None = None,
                       pair: str | None = None, limit: int = 100_000) -> list[Outcome]:
        """Outcomes with start <= created_at < end, oldest first, at most ``limit``."""
        ...

    async def save_router_state(self, state: dict) -> None:
        """Persist the router's learned state (one JSON object shared by every gateway: the
        last writer wins)."""
        ...

    async def load_router_state(self) -> tuple[dict, float] | None:
        """(state, epoch seconds it was saved), or None if none was ever saved."""
        ...

    # --- lifecycle -----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers (for readiness probes)."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...
