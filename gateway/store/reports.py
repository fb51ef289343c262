"""Usage reports built from hourly rollups, shared by both stores.

Each backend only fetches the rollup rows of the hours asked for (never the raw ledger); the
grouping, labelling and sorting happen here so both stores return identical reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.store.errors import InvalidInput
from gateway.store.money import micros_to_usd
from gateway.store.periods import SECONDS_PER_HOUR, day_label, hour_label
from gateway.store.records import UsageRecord, UsageRow

GROUP_BY_FIELDS = ("team", "key", "model", "requested_model", "day", "hour")


@dataclass
class RollupRow:
    """One hourly rollup cell: (hour, team, key, requested model, routed model) -> sums."""

    hour: int
    team_id: str
    key_id: str
    requested_model: str
    routed_model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    baseline_micros: int = 0
    gpu_micros: int = 0
    errors: int = 0


# Metric names as stored by the backends, in a fixed order.
ROLLUP_METRICS = ("requests", "prompt_tokens", "completion_tokens", "cost_micros",
                  "baseline_micros", "gpu_micros", "errors")


def rollup_increments(record: UsageRecord) -> dict[str, int]:
    """What one usage record adds to its rollup cell."""
    return {
        "requests": 1,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_micros": int(record.cost_usd * 1_000_000),
        "baseline_micros": int(record.baseline_cost_usd * 1_000_000),
        "gpu_micros": record.gpu_micros,
        "errors": 1 if record.is_error else 0,
    }


def hour_range(start: float, end: float) -> tuple[int, int]:
    """Hour buckets overlapping [start, end): (first, last exclusive). Reports are hour-granular."""
    if end < start:
        raise InvalidInput("report end is before its start")
    return int(start // SECONDS_PER_HOUR), int(math.ceil(end / SECONDS_PER_HOUR))


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    """Validate and de-duplicate the grouping columns, keeping the caller's order."""
    if isinstance(group_by, str):
        raise InvalidInput("group_by must be a list of column names, not a string")
    seen: list[str] = []
    for name in group_by:
        if name not in GROUP_BY_FIELDS:
            raise InvalidInput(f"cannot group by {name!r}; choose from {GROUP_BY_FIELDS}")
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def _dimensions(row: RollupRow, group_by: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    dims = []
    for name in group_by:
        if name == "team":
            dims.append(("team_id", row.team_id))
        elif name == "key":
            dims.append(("key_id", row.key_id))
        elif name == "model":
            dims.append(("model", row.routed_model))
        elif name == "requested_model":
            dims.append(("requested_model", row.requested_model))
        elif name == "day":
            dims.append(("day", day_label(row.hour)))
        elif name == "hour":
            dims.append(("hour", hour_label(row.hour)))
    return tuple(dims)


def aggregate(rows: Iterable[RollupRow], group_by: Sequence[str]) -> list[UsageRow]:
    """Sum rollup rows per group; rows sorted by their grouping columns.

    With an empty ``group_by`` the result is a single total row (also when there is no usage).
    """
    columns = check_group_by(group_by)
    sums: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for row in rows:
        acc = sums.setdefault(_dimensions(row, columns), [0] * len(ROLLUP_METRICS))
        for i, metric in enumerate(ROLLUP_METRICS):
            acc[i] += getattr(row, metric)
    if not columns and not sums:
        sums[()] = [0] * len(ROLLUP_METRICS)
    result = []
    for dims in sorted(sums):
        m = dict(zip(ROLLUP_METRICS, sums[dims], strict=True))
        result.append(UsageRow(
            **dict(dims),
            requests=m["requests"],
            prompt_tokens=m["prompt_tokens"],
            completion_tokens=m["completion_tokens"],
            cost_usd=micros_to_usd(m["cost_micros"]),
            baseline_cost_usd=micros_to_usd(m["baseline_micros"]),
            gpu_seconds=m["gpu_micros"] / 1_000_000,
            errors=m["errors"],
        ))
    return result
