"""Usage reports: the JSON document (and its CSV form) that the API, the CLI and the HTML page
share. Built from the store's hourly rollups, never from the raw ledger, so a report over a year
reads at most one row per team, key, model and hour.

Times: ``from``/``to`` accept epoch seconds, ``YYYY-MM-DD`` (midnight UTC) or ISO 8601
datetimes (naive ones are UTC). Rollups are hourly, so a report covers the whole hours that
overlap [from, to).
"""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime, timezone
from decimal import Decimal

from gateway.http.errors import BadRequest
from gateway.store import GROUP_BY_FIELDS, Store, UsageRow
from gateway.tenancy.errors import mapped_store_errors
from gateway.tenancy.ops import money

DEFAULT_GROUP_BY = ("team", "model", "day")
DEFAULT_RANGE_S = 30 * 86400
# Report column name of each grouping field, and the UsageRow attribute it comes from.
COLUMNS = {"team": "team_id", "key": "key_id", "model": "model", "requested_model": "requested_model",
           "day": "day", "hour": "hour"}
METRICS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "baseline_cost_usd", "savings_usd",
           "gpu_seconds", "errors")


def parse_time(value: str | None, param: str, default: float) -> float:
    """Epoch seconds from a query value; 400 naming ``param`` when it is not a time."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"Invalid value for '{param}': use epoch seconds, YYYY-MM-DD or an ISO 8601 time.",
                         param=param, code="invalid_request") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_range(start: str | None, end: str | None, now: float | None = None) -> tuple[float, float]:
    """(from, to) with defaults: the last 30 days up to now."""
    to = parse_time(end, "to", time.time() if now is None else now)
    frm = parse_time(start, "from", to - DEFAULT_RANGE_S)
    if to < frm:
        raise BadRequest("'to' is before 'from'.", param="to", code="invalid_request")
    return frm, to


def parse_group_by(value: str | None) -> tuple[str, ...]:
    """Comma-separated grouping columns; 400 naming an unknown one."""
    if value is None:
        return DEFAULT_GROUP_BY
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if name not in GROUP_BY_FIELDS:
            raise BadRequest(f"Cannot group by '{name}'; choose from {', '.join(GROUP_BY_FIELDS)}.",
                             param="group_by", code="invalid_request")
    return tuple(dict.fromkeys(names))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metrics(requests: int, prompt: int, completion: int, cost: Decimal, baseline: Decimal, gpu: float,
             errors: int) -> dict:
    return {"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion,
            "cost_usd": money(cost), "baseline_cost_usd": money(baseline), "savings_usd": money(baseline - cost),
            "gpu_seconds": round(gpu, 6), "errors": errors}


def row_json(row: UsageRow, group_by: tuple[str, ...]) -> dict:
    out = {name: getattr(row, COLUMNS[name]) for name in group_by}
    out.update(_metrics(row.requests, row.prompt_tokens, row.completion_tokens, row.cost_usd,
                        row.baseline_cost_usd, row.gpu_seconds, row.errors))
    return out


def totals_json(rows: list[UsageRow]) -> dict:
    """Exact sums (Decimal micro-dollars) over the report's rows."""
    return _metrics(sum(r.requests for r in rows), sum(r.prompt_tokens for r in rows),
                    sum(r.completion_tokens for r in rows), sum((r.cost_usd for r in rows), Decimal(0)),
                    sum((r.baseline_cost_usd for r in rows), Decimal(0)),
                    sum(round(r.gpu_seconds * 1_000_000) for r in rows) / 1_000_000, sum(r.errors for r in rows))


async def build_report(store: Store, start: float, end: float, group_by: tuple[str, ...],
                       team_id: str | None) -> dict:
    """The usage report document: one row per group, plus totals."""
    with mapped_store_errors():
        rows = await store.usage_report(start, end, group_by, team_id=team_id)
    return {"object": "usage_report", "from": iso(start), "to": iso(end), "team": team_id,
            "group_by": list(group_by), "data": [row_json(r, group_by) for r in rows], "totals": totals_json(rows)}


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column.endswith("_usd"):
        return f"{value:.6f}"  # fixed point: spreadsheets would otherwise see 1e-06
    return str(value)


def report_csv(report: dict) -> str:
    """The report's rows as CSV (grouping columns first, then the metrics)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [*report["group_by"], *METRICS]
    writer.writerow(header)
    for row in report["data"]:
        writer.writerow([_cell(c, row[c]) for c in header])
    return out.getvalue()
