"""deploy/serve/muxgate_pool_app.py: the Serve application builder the RayService imports.

Builds the application object from the cluster's ConfigMap config without starting Ray, checks it
against what `muxgate serve` would deploy, and validates the Serve config with Ray's own schema.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from support import REPO

pytest.importorskip("ray.serve")

DEPLOY = REPO / "deploy"


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_builder():
    return load_module("muxgate_pool_app", DEPLOY / "serve" / "muxgate_pool_app.py")


def rayservice() -> dict:
    docs = yaml.safe_load_all((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "RayService")


def cluster_config_file(tmp_path, gateway_deploys: bool = False):
    """The ConfigMap's muxgate config as a file, minus keys the schema does not know yet.
    gateway_deploys: drop `pool.deploy: false`, so `muxgate serve` takes its deploying path."""
    manifests = load_module("deploy_test_manifests", Path(__file__).with_name("test_manifests.py"))
    data, _ = manifests.configmap_config()
    if gateway_deploys:
        data["pool"].pop("deploy", None)
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(manifests.strip_pending_keys(data)))
    return path


def test_serve_config_validates_with_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(rayservice()["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.name == "pool" and app.route_prefix is None
    assert config.proxy_location.value == "Disabled"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_builder_builds_the_pool_application(tmp_path, monkeypatch):
    from ray.serve import Application

    from workers.serve_app import DEPLOYMENT_NAME

    builder = load_builder()
    boards = []
    monkeypatch.setattr(builder, "ensure_board", lambda: boards.append(True))  # would need a running Ray
    app = builder.build({"config": str(cluster_config_file(tmp_path)), "revision": "7"})
    assert isinstance(app, Application)
    deployment = app._bound_deployment
    assert deployment.name == DEPLOYMENT_NAME
    assert deployment.num_replicas == 4
    assert deployment.ray_actor_options["num_gpus"] == 0.5
    specs, options = deployment.init_args
    assert [s.name for s in specs] == ["mux-2m", "mux-5m", "mux-10m", "mux-20m", "mux-50m", "mux-120m"]
    assert specs[0].path == "/opt/muxgate/var/zoo/mux-2m"
    assert options.device_budget_bytes == 10240 * 1024 * 1024
    assert boards == [True], "the builder creates the stats board the gateways read"


def test_builder_refuses_unknown_args():
    with pytest.raises(ValueError, match="unknown args"):
        load_builder().build({"confg": "/etc/muxgate/muxgate.yaml"})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_builder_options_equal_what_muxgate_serve_deploys(tmp_path, monkeypatch):
    """The builder and gateway/server.make_backend deploy the same PoolOptions and specs."""
    import gateway.server
    import workers.serve_app
    from gateway.config import load_config

    config = load_config(cluster_config_file(tmp_path, gateway_deploys=True))
    captured = {}

    def fake_deploy(specs, options, address=None):
        captured.update(specs=specs, options=options)
        return object()

    monkeypatch.setattr(workers.serve_app, "deploy_pool", fake_deploy)
    monkeypatch.setattr(gateway.server, "RayServeBackend", lambda *args, **kwargs: None)
    gateway.server.make_backend(config, use_ray=True)
    assert load_builder().ray_pool_options(config) == captured["options"]
    assert gateway.server.model_specs(config) == captured["specs"]
