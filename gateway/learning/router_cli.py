"""`muxgate router status|fit` and `muxgate export distill` (the logic: gateway/learning/router_ops.py and
gateway/learning/distill.py). Like the other store commands they open the store the config names."""

from __future__ import annotations

import sys

from gateway.tenancy.admin_cli import _run
from gateway.http.errors import BadRequest
from gateway.tenancy.reports import parse_range


def _fit(args):
    if not args.from_store:
        print("muxgate: router fit reads the outcomes the gateways stored; pass --from-store", file=sys.stderr)
        sys.exit(2)
    from gateway.learning.router_ops import router_fit

    _run(args, lambda ops, store, config: router_fit(store, config, args.out))


def _status(args):
    from gateway.learning.router_ops import router_status

    _run(args, lambda ops, store, config: router_status(store, config))


async def _distill(args, store, config) -> str:
    from gateway.learning.distill import distill_jsonl

    start, end = parse_range(args.start, args.end)
    team = next((t for t in config.teams if t.id == args.team), None)
    if team is None and await store.get_team(args.team) is None:
        raise BadRequest(f"No team '{args.team}'.", param="team")
    text, count = await distill_jsonl(store, args.team, bool(team and team.store_prompts), start, end,
                                      args.min_score)
    print(f"muxgate: {count} examples", file=sys.stderr)
    return text


def register(sub) -> None:
    router = sub.add_parser("router", help="the routing policy's learned router").add_subparsers(
        dest="router_command", required=True)
    p = router.add_parser("status", help="per model pair: labels seen, current large share, estimated APGR (95%% CI)")
    p.set_defaults(func=_status)
    p = router.add_parser("fit", help="refit the router offline from the outcomes in the store")
    p.add_argument("--from-store", action="store_true", help="read every stored outcome (feedback, shadow)")
    p.add_argument("--out", help="write a weights directory (classifier files + adaptive_state.json) instead of the "
                   "store; point the policy's classifier.weights at it")
    p.set_defaults(func=_fit)
    export = sub.add_parser("export", help="export stored traffic").add_subparsers(dest="export_command", required=True)
    p = export.add_parser("distill", help="the large tier's judged answers as chat fine-tuning JSONL "
                          "(teams with store_prompts only)")
    p.add_argument("--team", required=True)
    p.add_argument("--from", dest="start", help="start: epoch seconds, YYYY-MM-DD or ISO time (default: 30 days ago)")
    p.add_argument("--to", dest="end", help="end, exclusive (default: now)")
    p.add_argument("--min-score", type=float, default=0.5, help="lowest judge score of the large answer (default 0.5)")
    p.add_argument("--out", dest="output", help="write to this file instead of stdout")
    p.set_defaults(func=lambda a: _run(a, lambda ops, store, config: _distill(a, store, config)))
