"""Configuration is validated at load time, with errors that name the file and the key path."""

import subprocess
import sys

import pytest
import yaml

from gateway.config import ConfigError, load_config
from support import REPO


def write(tmp_path, data):
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


BASE = {"version": 1, "models": [{"name": "m", "zoo": True}], "routing": {"default_model": "m"}}


def test_shipped_configs_are_valid():
    from policies.policy import load_policy

    for path in (REPO / "configs").glob("*.yaml"):
        if "tiers" in yaml.safe_load(path.read_text()):  # a routing policy, not a gateway config
            load_policy(path)
        else:
            load_config(path)


@pytest.mark.parametrize("change,where", [
    ({"version": 2}, "version"),
    ({"surprise": 1}, "surprise"),
    ({"server": {"port": "eighty"}}, "server.port"),
    ({"server": {"colour": "blue"}}, "server.colour"),
    ({"models": [{"name": "m", "zoo": True}, {"name": "x", "zoo": True, "paht": "/tmp"}]}, "models[1].paht"),
    ({"models": [{"name": "m"}]}, "models[0]"),
    ({"keys": [{"team": "t"}]}, "keys[0]"),
    ({"pool": {"backend": "kubernetes"}}, "pool.backend"),
    ({"pool": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "pool.autoscaling"),
    ({"pool": {"autoscaling": {"min_replicas": -1}}}, "pool.autoscaling.min_replicas"),
    ({"pool": {"autoscaling": {"target_ongoing_requests": 2}}}, "use target_per_replica"),  # Serve's own key
    ({"pool": {"autoscaling": {"look_back_period_s": 1, "metrics_interval_s": 2}}}, "pool.autoscaling"),
    ({"server": {"body_read_timeout_s": float("inf")}}, "server.body_read_timeout_s"),  # .inf: never
    ({"server": {"default_max_tokens": 2**70}}, "server.default_max_tokens"),  # a request's bound too
    ({"routing": {"default_model": "ghost"}}, "default_model"),
    ({"models": [{"name": "m", "zoo": True}, {"name": "r", "upstream": {"base_url": "api.example.com/v1",
                                                                       "model": "x"}}]}, "models[1].upstream.base_url"),
    ({"models": [{"name": "m", "zoo": True}, {"name": "r", "upstream": {"base_url": "ftp://example.com/v1",
                                                                       "model": "x"}}]}, "models[1].upstream.base_url"),
])
def test_errors_name_the_file_and_key_path(tmp_path, change, where):
    path = write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert where in message


def test_yaml_syntax_errors_name_the_file(tmp_path):
    path = write(tmp_path, "version: 1\nmodels: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_cli_config_check_exits_nonzero_on_a_bad_file(tmp_path):
    bad = write(tmp_path, {**BASE, "version": 7})
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "check", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "version" in out.stderr
    good = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "check", "configs/default.yaml"],
                          capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stderr


def test_config_reference_is_current_and_documents_every_key():
    from gateway.config_docs import render

    text = render()
    assert (REPO / "docs" / "CONFIG.md").read_text() == text, "run: muxgate config docs > docs/CONFIG.md"
    assert "| `pool.num_gpus` |" in text and "| `keys[].key_file` |" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert all(not line.rstrip().endswith("|  |") for line in rows), "a key without a description"


def test_autoscaling_section_maps_onto_serves_config_with_muxgate_policy(tmp_path):
    """min_replicas 0 is scale to zero; Serve's own delays are neutral so muxgate's policy alone decides."""
    from gateway.server import ray_pool_options
    from workers.serve_app import serve_autoscaling_config

    config = load_config(write(tmp_path, {**BASE, "pool": {"autoscaling": {
        "min_replicas": 0, "max_replicas": 3, "target_per_replica": 4, "downscale_to_zero_delay_s": 5}}}))
    serve_config = serve_autoscaling_config(ray_pool_options(config).autoscaling)
    assert (serve_config.min_replicas, serve_config.max_replicas) == (0, 3)
    assert serve_config.policy.policy_function == "workers.autoscaling:PoolAutoscalingPolicy"
    assert serve_config.policy.policy_kwargs == {"target_per_replica": 4.0, "upscale_delay_s": 10.0,
                                                 "downscale_delay_s": 300.0, "downscale_to_zero_delay_s": 5.0,
                                                 "scale_on_residency_pressure": True}
    assert (serve_config.upscale_delay_s, serve_config.downscale_delay_s, serve_config.downscale_to_zero_delay_s) == (0, 0, 0)
    assert load_config(write(tmp_path, {**BASE, "pool": {"autoscaling": {}}})).pool.autoscaling.min_replicas == 1


def test_hot_model_spreading_is_configured_in_the_pool_section(tmp_path):
    from gateway.server import ray_pool_options
    from workers.serve_app import build_pool_app

    default = ray_pool_options(load_config(write(tmp_path, BASE)))
    assert (default.spread_hot_models, default.hot_waiting_requests) == (True, 4)
    options = ray_pool_options(load_config(write(tmp_path, {**BASE, "pool": {"spread_hot_models": False,
                                                                             "hot_waiting_requests": 2}})))
    router = build_pool_app([], options)._bound_deployment._deployment_config.request_router_config
    assert router.request_router_kwargs == {"spread_hot_models": False, "hot_waiting_requests": 2}


def test_preempt_after_s_reaches_both_pools_and_null_turns_preemption_off(tmp_path):
    from gateway.server import pool_options, ray_pool_options

    default = load_config(write(tmp_path, BASE))
    assert pool_options(default)["preempt_after_s"] == ray_pool_options(default).preempt_after_s == 2.0
    off = load_config(write(tmp_path, {**BASE, "pool": {"preempt_after_s": None}}))
    assert pool_options(off)["preempt_after_s"] is None and ray_pool_options(off).preempt_after_s is None
    with pytest.raises(ConfigError, match="preempt_after_s"):
        load_config(write(tmp_path, {**BASE, "pool": {"preempt_after_s": -1}}))
