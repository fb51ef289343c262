"""The HTML usage report: one self-contained page (inline CSS, inline SVG charts drawn by a small
inline script, no external resource), served at GET /reports and written by
`muxgate report --format html`.

The page embeds two report documents (spend per time bucket by model, and by team) exactly as
GET /v1/reports/usage returns them, and draws its charts from those, so what the charts show is
by construction the JSON report.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources

from gateway.tenancy.reports import build_report, iso
from gateway.store import Store

# Served with the page: scripts and styles inline only, nothing fetched from anywhere.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "img-src data:; base-uri 'none'; form-action 'self'")
HOUR_BUCKETS_UP_TO_S = 3 * 86400


def pick_bucket(start: float, end: float, bucket: str | None) -> str:
    """'hour' for short ranges (up to three days), else 'day', unless asked."""
    if bucket in ("hour", "day"):
        return bucket
    return "hour" if end - start <= HOUR_BUCKETS_UP_TO_S else "day"


async def page_data(store: Store, start: float, end: float, team_id: str | None, bucket: str) -> dict:
    """The two report documents the charts are drawn from."""
    return {"bucket": bucket, "from": iso(start), "to": iso(end), "team": team_id,
            "by_model": await build_report(store, start, end, (bucket, "model"), team_id),
            "by_team": await build_report(store, start, end, (bucket, "team"), team_id)}


def _dollars(value: float) -> str:
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def _table(rows: list[dict], column: str, label: str) -> str:
    sums: dict[str, list[float]] = {}
    for row in rows:
        acc = sums.setdefault(row[column], [0, 0.0, 0.0, 0.0])
        for i, name in enumerate(("requests", "cost_usd", "savings_usd", "gpu_seconds")):
            acc[i] += row[name]
    if not sums:
        return '<p class="empty">No usage in this range.</p>'
    body = "".join(
        f"<tr><td>{html.escape(str(name))}</td><td>{int(v[0])}</td><td>{_dollars(round(v[1], 6))}</td>"
        f"<td>{_dollars(round(v[2], 6))}</td><td>{v[3]:.3f}</td></tr>" for name, v in sorted(sums.items()))
    return (f'<table id="totals-by-{column}"><thead><tr><th>{label}</th><th>requests</th><th>spend</th>'
            f"<th>saved</th><th>GPU-s</th></tr></thead><tbody>{body}</tbody></table>")


def render_page(data: dict, baseline_model: str | None) -> str:
    """The complete HTML document for ``data`` (from :func:`page_data`)."""
    template = resources.files("gateway.tenancy.templates").joinpath("report.html").read_text(encoding="utf-8")
    totals = data["by_model"]["totals"]
    scope = f"team {data['team']}" if data["team"] else "all teams"
    subtitle = f"{scope} · {data['from']} to {data['to']} · per {data['bucket']}"
    # '<' escaped so no string in the data can close the script element.
    embedded = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    values = {
        "__SCOPE__": html.escape(scope),
        "__SUBTITLE__": html.escape(subtitle),
        "__BASELINE__": html.escape(baseline_model or "the routed model"),
        "__TOTAL_COST__": _dollars(totals["cost_usd"]),
        "__TOTAL_BASELINE__": _dollars(totals["baseline_cost_usd"]),
        "__TOTAL_SAVINGS__": _dollars(totals["savings_usd"]),
        "__TOTAL_REQUESTS__": str(totals["requests"]),
        "__TOTAL_GPU__": f"{totals['gpu_seconds']:.3f}",
        "__TEAM_TABLE__": _table(data["by_team"]["data"], "team", "team"),
        "__MODEL_TABLE__": _table(data["by_model"]["data"], "model", "model"),
        "__DATA__": embedded,
    }
    # One pass, so a value that happens to contain a placeholder is never substituted again.
    return re.sub(r"__[A-Z_]+__", lambda m: values.get(m.group(0), m.group(0)), template)
