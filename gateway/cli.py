"""The `muxgate` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from gateway.config import ConfigError, load_config
from policies.policy import PolicyError

DEFAULT_CONFIG = "configs/default.yaml"


def _serve(args) -> None:
    from gateway.server import serve

    config = load_config(args.config)
    use_ray = config.pool.backend == "ray" and not args.no_ray
    # SIGTERM asks for a clean stop, like Ctrl-C. While uvicorn serves, its handler drains the
    # requests and shuts the pool down; then it re-raises the signal to the handler before it: this
    # one (or ray.init's, which does the same), so `muxgate serve` exits 0, not killed by the signal.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve(config, host=args.host, port=serve_port(args), use_ray=use_ray, ray_address=args.ray_address)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(signum)  # unwinds (finally blocks, atexit: ray.shutdown) rather than dying on the spot


def serve_port(args) -> int | None:
    """--port, else $MUXGATE_PORT (so a wrapper, CI or a container, can move the README's command
    to a free port), else None: server.port in the config."""
    value = os.environ.get("MUXGATE_PORT", "").strip()
    if args.port is not None or not value:
        return args.port
    if not value.isdigit() or int(value) > 65535:
        print(f"muxgate: MUXGATE_PORT={value!r} is not a port number (0-65535)", file=sys.stderr)
        sys.exit(2)
    return int(value)


def _zoo_build(args) -> None:
    from pathlib import Path

    from workers.zoo import build_zoo

    dirs = build_zoo(Path(args.dir), args.only or None, progress=not args.quiet)
    for d in dirs:
        print(d)


def _zoo_list(args) -> None:
    from workers.zoo import ZOO

    for m in ZOO:
        print(f"{m.name:12s} {m.parameter_count() / 1e6:7.1f}M params  hidden={m.hidden} layers={m.layers}")


def _config_check(args) -> None:
    load_config(args.file)
    print(f"{args.file}: ok")


def _policy_check(args) -> None:
    from policies.policy import load_policy

    served = None
    if args.config:
        served = {m.name for m in load_config(args.config).models}
    policy = load_policy(args.file, served)
    routes = ", ".join(f"{n} ({r.strategy})" for n, r in policy.routes.items())
    print(f"{args.file}: ok; tiers {', '.join(policy.tiers)}; routes {routes}")


def _config_docs(args) -> None:
    from gateway.config_docs import render

    print(render(), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="muxgate", description="One OpenAI-compatible endpoint for many models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (one line per request)")
    parser.add_argument("--log-format", choices=["json", "text"], default="json",
                        help="structured JSON lines (default) or plain text")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway and the model pool")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    p.add_argument("--host", default=None, help="listen address (default: server.host in the config)")
    p.add_argument("--port", type=int, default=None,
                   help="listen port (default: $MUXGATE_PORT when set, else server.port in the config)")
    p.add_argument("--no-ray", action="store_true", help="run models in this process instead of Ray Serve")
    p.add_argument("--ray-address", default=None, help="attach to an existing Ray cluster (e.g. ray://host:10001)")
    p.set_defaults(func=_serve)

    zoo = sub.add_parser("zoo", help="the offline demo model zoo").add_subparsers(dest="zoo_command", required=True)
    b = zoo.add_parser("build", help="build the demo models (skips those already built)")
    b.add_argument("--dir", default="var/zoo", help="output directory (default var/zoo)")
    b.add_argument("--only", nargs="*", help="build only these models")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_zoo_build)
    zl = zoo.add_parser("list", help="list the demo models")
    zl.set_defaults(func=_zoo_list)

    c = sub.add_parser("config", help="configuration files").add_subparsers(dest="config_command", required=True)
    cc = c.add_parser("check", help="validate a config file")
    cc.add_argument("file")
    cc.set_defaults(func=_config_check)
    c.add_parser("docs", help="print the configuration reference (docs/CONFIG.md)").set_defaults(func=_config_docs)

    pol = sub.add_parser("policy", help="routing policies").add_subparsers(dest="policy_command", required=True)
    pc = pol.add_parser("check", help="validate a routing policy file")
    pc.add_argument("file")
    pc.add_argument("--config", default=None, help="also check that every model it names is served by this config")
    pc.set_defaults(func=_policy_check)

    from gateway.tenancy.admin_cli import register

    register(sub, DEFAULT_CONFIG)  # teams, keys, report
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from gateway.http.logs import configure_logging

    configure_logging(logging.INFO if args.verbose else logging.WARNING, args.log_format)
    try:
        args.func(args)
    except (ConfigError, PolicyError) as exc:
        print(f"muxgate: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
