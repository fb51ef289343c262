"""The store's records: plain frozen dataclasses, identical for every backend.

Money fields are :class:`~decimal.Decimal` dollars with micro-dollar precision (see
:mod:`gateway.store.money`); times are epoch seconds (float, UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from gateway.store.money import MICROS_PER_USD, to_usd
from gateway.store.validation import check_constrained, check_model, check_request_id, check_tokens

# Denial.limit values. The first six are the budgets and rate limits; the gateway maps budgets
# to 429 (insufficient_quota) with Retry-After at the period's end, rates to 429 with Retry-After,
# model_not_allowed to 403 and key_revoked to 401.
TEAM_BUDGET = "team_budget"
KEY_BUDGET = "key_budget"
TEAM_RPM = "team_rpm"
KEY_RPM = "key_rpm"
TEAM_TPM = "team_tpm"
KEY_TPM = "key_tpm"
MODEL_NOT_ALLOWED = "model_not_allowed"
KEY_REVOKED = "key_revoked"
DENIAL_LIMITS = (TEAM_BUDGET, KEY_BUDGET, TEAM_RPM, KEY_RPM, TEAM_TPM, KEY_TPM,
                 MODEL_NOT_ALLOWED, KEY_REVOKED)
DENIAL_DETAILS = {
    TEAM_BUDGET: "the team's budget for this period is exhausted",
    KEY_BUDGET: "this API key's budget for this period is exhausted",
    TEAM_RPM: "the team's requests-per-minute limit is reached",
    KEY_RPM: "this API key's requests-per-minute limit is reached",
    TEAM_TPM: "the team's tokens-per-minute limit is reached",
    KEY_TPM: "this API key's tokens-per-minute limit is reached",
    MODEL_NOT_ALLOWED: "this API key may not use the model",
    KEY_REVOKED: "the API key is revoked or expired",
}

# UsageRecord.status values that are not counted as errors in the rollups.
NON_ERROR_STATUSES = frozenset({"ok", "client_disconnect"})

DEFAULT_SCOPES = ("inference",)


class _Unset:
    """Marker for 'leave this field alone' in updates, where None means 'unlimited'."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Team:
    """A team: the unit that owns keys, a budget and rate limits."""

    id: str
    name: str
    budget_usd: Decimal | None       # None = unlimited
    budget_period: str               # "daily" | "monthly" | "total"
    rpm_limit: int | None            # None = unlimited
    tpm_limit: int | None
    allowed_models: tuple[str, ...]  # empty = every model
    created_at: float
    share: float = 1.0               # weight in each replica's fair queue, relative to other teams


@dataclass(frozen=True)
class ApiKey:
    """A stored API key. Never holds the secret; only its display prefix."""

    id: str
    team_id: str
    name: str
    display_prefix: str
    scopes: tuple[str, ...]
    allowed_models: tuple[str, ...]  # empty = whatever the team allows
    budget_usd: Decimal | None       # narrows the team's budget; None = no key budget
    budget_period: str
    rpm_limit: int | None
    tpm_limit: int | None
    created_at: float
    expires_at: float | None         # set by rotation (grace end) or at creation
    revoked_at: float | None
    replaced_by: str | None          # id of the key that rotation created

    def is_active(self, now: float) -> bool:
        """True while the key authenticates: not revoked and not past its expiry."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class CreatedKey:
    """The result of creating or rotating a key: the secret, shown exactly once, and the record."""

    key: ApiKey
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the result of a successful key lookup."""

    team_id: str
    key_id: str
    scopes: frozenset[str]
    allowed_models: frozenset[str] | None  # team ∩ key allow-lists; None = every model
    share: float = 1.0  # the team's weight in the pool's fair queue, as the store had it at lookup

    def allows_model(self, model: str) -> bool:
        """Whether this principal may use ``model``."""
        return self.allowed_models is None or model in self.allowed_models


@dataclass(frozen=True)
class Reservation:
    """Budget and rate capacity held for one request until it is settled or expires."""

    id: str                 # the request id; settle is idempotent on it
    team_id: str
    key_id: str
    model: str
    cost_usd: Decimal       # worst case, rounded up to the micro-dollar
    tokens: int             # worst case
    created_at: float
    expires_at: float
    team_period: str        # budget period keys the spend is charged to
    key_period: str
    tpm_limited: bool = False  # the team or the key had a TPM limit when it was made

    @property
    def cost_micros(self) -> int:
        """Worst-case cost in integer micro-dollars."""
        return int(self.cost_usd * MICROS_PER_USD)


@dataclass(frozen=True)
class Denial:
    """Why a reservation was refused.

    ``retry_after_s``: for rate limits, when the request would fit; for daily/monthly budgets,
    when the period resets; None when waiting will not help (a 'total' budget, a request larger
    than the whole TPM limit, a revoked key, a model not allowed).
    """

    limit: str
    retry_after_s: float | None = None
    detail: str = ""

    @classmethod
    def of(cls, limit: str, retry_after_s: float | None = None) -> Denial:
        """A denial with the standard, client-safe explanation of ``limit``."""
        return cls(limit, retry_after_s, DENIAL_DETAILS[limit])


@dataclass(frozen=True)
class UsageRecord:
    """One request's entry in the usage ledger. Money is normalised to micro-dollar Decimals."""

    request_id: str
    time: float
    team_id: str
    key_id: str
    requested_model: str
    routed_model: str
    route_reason: str = ""
    route_score: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal("0")
    baseline_cost_usd: Decimal = Decimal("0")  # the same tokens on the baseline (largest) model
    gpu_seconds: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    status: str = "ok"   # "ok" | "error" | "client_disconnect" | ...
    tool_calls: int = 0  # tool calls the model made (all choices)
    # what constrained the answer: the engine's grammar ("json_schema", "json_object",
    # "tool_call"), or for an upstream what it was asked to enforce; None: free text
    constrained: str | None = None

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        check_model(self.requested_model)
        check_model(self.routed_model)
        check_tokens(self.prompt_tokens)
        check_tokens(self.completion_tokens)
        check_tokens(self.tool_calls)
        check_constrained(self.constrained)
        object.__setattr__(self, "time", float(self.time))
        object.__setattr__(self, "cost_usd", to_usd(self.cost_usd))
        object.__setattr__(self, "baseline_cost_usd", to_usd(self.baseline_cost_usd))
        # Rollups sum GPU time in integer microseconds; round the record the same way.
        object.__setattr__(self, "gpu_seconds", round(float(self.gpu_seconds), 6))

    @property
    def is_error(self) -> bool:
        """Counted in the rollups' ``errors`` column."""
        return self.status not in NON_ERROR_STATUSES

    @property
    def gpu_micros(self) -> int:
        """GPU time in integer microseconds, as the rollups sum it."""
        return round(self.gpu_seconds * 1_000_000)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (money as strings) for backends that store documents. Field by field:
        every field is a scalar, and dataclasses.asdict's deep copy cost several times more on
        the request's path (the settlement journal and Redis's settle call this per request)."""
        data = {name: getattr(self, name) for name in _USAGE_RECORD_FIELDS}
        data["cost_usd"] = str(self.cost_usd)
        data["baseline_cost_usd"] = str(self.baseline_cost_usd)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> UsageRecord:
        """Inverse of :meth:`to_json_dict`."""
        return cls(**data)


_USAGE_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))


@dataclass(frozen=True)
class UsageRow:
    """One row of a usage report: the grouping columns asked for, then the sums."""

    team_id: str | None = None
    key_id: str | None = None
    model: str | None = None             # the routed model (what actually served)
    requested_model: str | None = None
    day: str | None = None               # 'YYYY-MM-DD' (UTC)
    hour: str | None = None              # 'YYYY-MM-DDTHH:00:00Z'
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal("0.000000")
    baseline_cost_usd: Decimal = Decimal("0.000000")
    gpu_seconds: float = 0.0
    errors: int = 0

    @property
    def savings_usd(self) -> Decimal:
        """What routing saved against sending every request to the baseline model."""
        return self.baseline_cost_usd - self.cost_usd


@dataclass(frozen=True)
class Spend:
    """A team's position in its current budget period."""

    team_id: str
    budget_period: str
    period_start: float
    period_end: float | None       # None for 'total'
    budget_usd: Decimal | None     # None = unlimited
    spent_usd: Decimal             # settled
    reserved_usd: Decimal          # held by unexpired, unsettled reservations
    remaining_usd: Decimal | None  # budget - spent - reserved, floored at 0; None = unlimited
