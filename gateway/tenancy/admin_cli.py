"""`muxgate teams ...`, `muxgate keys ...` and `muxgate report ...`.

The CLI opens the store that the config's `store.url` names and runs the same operations as the
admin API (gateway/tenancy/ops.py, gateway/tenancy/reports.py), printing the same JSON. It needs no admin
key: whoever can open the store (the SQLite file, the Redis server) already holds everything the
admin key protects. Changes are visible to running gateways at their next lookup (<= 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.config import load_config
from gateway.tenancy.costs import CostModel
from gateway.http.errors import GatewayError
from gateway.tenancy.report_page import page_data, pick_bucket, render_page
from gateway.tenancy.reports import build_report, parse_group_by, parse_range, report_csv
from gateway.tenancy.wiring import open_configured_store
from gateway.tenancy.ops import TenancyOps

UNLIMITED = ("none", "null", "unlimited")
# An option given as none/unlimited: sent as null (no limit), unlike an option not given at all.
NULL = object()


def _limit(text: str):
    """An integer limit, or NULL for none/unlimited."""
    return NULL if text.lower() in UNLIMITED else int(text)


def _dollars(text: str):
    return NULL if text.lower() in UNLIMITED else text


def _share(text: str) -> float:
    """A team's fair-share weight (the admin operations refuse one that is not finite and > 0)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _run(args, action) -> None:
    """Open the store, run ``action(ops, store)``, print its result as JSON, close the store."""
    config = load_config(args.config)

    async def main():
        store = open_configured_store(config)
        try:
            return await action(TenancyOps(store), store, config)
        finally:
            await store.close()

    try:
        result = asyncio.run(main())
    except GatewayError as exc:
        print(f"muxgate: {exc.message}", file=sys.stderr)
        sys.exit(1)
    if isinstance(result, str):
        if getattr(args, "output", None):
            Path(args.output).write_text(result, encoding="utf-8")
        else:
            sys.stdout.write(result)
    else:
        print(json.dumps(result, indent=2))


def _given(args, names: dict[str, str]) -> dict:
    """The body fields whose options were given on the command line (name in args -> field)."""
    given = {field: getattr(args, name) for name, field in names.items() if getattr(args, name) is not None}
    return {field: None if value is NULL else value for field, value in given.items()}


_LIMIT_OPTIONS = {"budget": "budget_usd", "period": "budget_period", "rpm": "rpm_limit", "tpm": "tpm_limit",
                  "models": "allowed_models"}


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=_dollars, help="budget in dollars per period (none: unlimited)")
    p.add_argument("--period", choices=["daily", "monthly", "total"], help="budget period (default monthly)")
    p.add_argument("--rpm", type=_limit, help="requests per minute (none: unlimited)")
    p.add_argument("--tpm", type=_limit, help="tokens per minute (none: unlimited)")
    p.add_argument("--models", type=_models, help="comma-separated allowed models ('': all)")


_TEAM_OPTIONS = {**_LIMIT_OPTIONS, "share": "share"}


def _add_team_limits(p: argparse.ArgumentParser) -> None:
    _add_limits(p)
    p.add_argument("--share", type=_share, help="weight in each replica's fair queue, relative to other teams "
                   "(> 0; default 1)")


def _teams(sub) -> None:
    teams = sub.add_parser("teams", help="teams: list, show, create, update, delete").add_subparsers(
        dest="teams_command", required=True)
    p = teams.add_parser("list", help="list teams")
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.list_teams()))
    p = teams.add_parser("show", help="a team and its spend this period")
    p.add_argument("team")
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.get_team(a.team)))
    p = teams.add_parser("create", help="create a team")
    p.add_argument("name")
    p.add_argument("--id", help="team id (default: random)")
    _add_team_limits(p)
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.create_team(
        {"name": a.name, **_given(a, {"id": "id", **_TEAM_OPTIONS})})))
    p = teams.add_parser("update", help="change a team's name, limits or share (only the options given)")
    p.add_argument("team")
    p.add_argument("--name")
    _add_team_limits(p)
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.update_team(
        a.team, _given(a, {"name": "name", **_TEAM_OPTIONS}))))
    p = teams.add_parser("delete", help="delete a team and revoke its keys (its usage stays)")
    p.add_argument("team")
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.delete_team(a.team)))


def _keys(sub) -> None:
    keys = sub.add_parser("keys", help="API keys: list, create, revoke, rotate").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("--team", help="only this team's keys")
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.list_keys(a.team)))
    p = keys.add_parser("create", help="create a key; its secret is printed once, here")
    p.add_argument("--team", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--scopes", type=_models, help="comma-separated scopes (default inference)")
    _add_limits(p)
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.create_key(
        {"team": a.team, "name": a.name, **_given(a, {"scopes": "scopes", **_LIMIT_OPTIONS})})))
    p = keys.add_parser("revoke", help="revoke a key now (every gateway refuses it within a second)")
    p.add_argument("key_id")
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.revoke_key(a.key_id)))
    p = keys.add_parser("rotate", help="replace a key; the old one keeps working for --grace seconds")
    p.add_argument("key_id")
    p.add_argument("--grace", type=float, default=0.0, help="seconds the old key keeps working (default 0)")
    p.set_defaults(func=lambda a: _run(a, lambda ops, *_: ops.rotate_key(a.key_id, {"grace_s": a.grace})))


async def _report(args, store, config) -> dict | str:
    start, end = parse_range(args.start, args.end)
    if args.format == "html":
        data = await page_data(store, start, end, args.team, pick_bucket(start, end, args.bucket))
        return render_page(data, CostModel.from_config(config.pricing).baseline_model)
    report = await build_report(store, start, end, parse_group_by(args.group_by), args.team)
    return report_csv(report) if args.format == "csv" else report


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="usage report of a team (or all teams) as json, csv or html")
    p.add_argument("--team", help="one team (default: all teams)")
    p.add_argument("--from", dest="start", help="start: epoch seconds, YYYY-MM-DD or ISO time (default: 30 days ago)")
    p.add_argument("--to", dest="end", help="end, exclusive (default: now)")
    p.add_argument("--group-by", default=None, help="comma-separated: team,key,model,requested_model,day,hour "
                   "(default team,model,day)")
    p.add_argument("--format", choices=["json", "csv", "html"], default="json")
    p.add_argument("--bucket", choices=["day", "hour"], help="html: time bucket of the charts")
    p.add_argument("--output", help="write to this file instead of stdout")
    p.set_defaults(func=lambda a: _run(a, lambda ops, store, config: _report(a, store, config)))


def register(sub, default_config: str) -> None:
    """Add the teams, keys, report, router and export commands to the `muxgate` parser."""
    before = set(sub.choices)
    _teams(sub)
    _keys(sub)
    _report_parser(sub)
    from gateway.learning.router_cli import register as register_router

    register_router(sub)  # router status / fit, export distill
    for name in set(sub.choices) - before:
        _add_config(sub.choices[name], default_config)


def _add_config(parser: argparse.ArgumentParser, default_config: str) -> None:
    """--config on every leaf command."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        parser.add_argument("--config", default=default_config, help=f"YAML config (default {default_config})")
        return
    for child in actions[0].choices.values():
        _add_config(child, default_config)
