"""The pool as a declarative Ray Serve application, for clusters: `import_path: muxgate_pool_app:build`.

`muxgate serve` deploys the pool itself (workers/serve_app.deploy_pool). On a shared cluster the
cluster owns it instead: KubeRay's RayService (serveConfigV2) or `serve deploy` imports this
builder on the cluster, and the gateways only attach. The builder reads the same muxgate YAML the
gateways read, so the models and the `pool:` section have one source.

This file is deploy glue, not part of the installed package: the images copy it to
/opt/muxgate/serve and put that directory on PYTHONPATH (deploy/docker/Dockerfile.*).
"""

from __future__ import annotations

import os

from gateway.config import load_config
from gateway.server import model_specs, ray_pool_options
from workers.serve_app import BOARD_NAME, BOARD_NAMESPACE, PoolBoard, build_pool_app

DEFAULT_CONFIG = "/etc/muxgate/muxgate.yaml"
# `revision` is read by nobody: Serve rebuilds an application when its args change, so bumping it
# rolls the pool after the config file (a ConfigMap) changed under an unchanged serveConfigV2.
KNOWN_ARGS = {"config", "revision"}


def ensure_board() -> None:
    """Create the stats board the replicas post to (the gateways read it for /metrics).

    Detached, because this builder runs in a short-lived Ray task whose actors would die with it;
    pinned to the head node, because gateways join the cluster as Ray nodes and come and go.
    """
    import ray

    ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})(PoolBoard).options(
        name=BOARD_NAME, namespace=BOARD_NAMESPACE, get_if_exists=True, lifetime="detached").remote()


def build(args: dict):
    """Serve's application builder: `args` is the application's `args:` mapping in the Serve config."""
    unknown = set(args) - KNOWN_ARGS
    if unknown:  # a typo here would otherwise be silently ignored
        raise ValueError(f"unknown args for muxgate_pool_app: {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(KNOWN_ARGS))}")
    path = args.get("config") or os.environ.get("MUXGATE_CONFIG") or DEFAULT_CONFIG
    config = load_config(path)
    ensure_board()
    return build_pool_app(model_specs(config), ray_pool_options(config))  # as `muxgate serve` deploys
