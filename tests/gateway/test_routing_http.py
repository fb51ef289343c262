"""`model: auto` under a routing policy, through a real server: headers explain every choice,
and a model that fails before its first token falls back along the policy's list."""

import httpx
import yaml

from support import KEY_ALPHA, make_config


def serve_with_policy(tmp_path, zoo_dir, start_server, policy, extra_models=()):
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy))
    config = make_config(zoo_dir)
    config["models"] = config["models"] + list(extra_models)
    config["routing"] = {"default_model": "mux-2m", "policy_file": str(path)}
    return start_server(config)


def ask(server, content="hello"):
    return httpx.post(server.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_ALPHA}"},
                      json={"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 2},
                      timeout=60)


def test_auto_requests_carry_model_score_and_reason(tmp_path, zoo_dir, start_server):
    policy = {"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
              "routes": {"default": {"large_share": 0.3}}}
    server = serve_with_policy(tmp_path, zoo_dir, start_server, policy)
    resp = ask(server, "Write a Python function that proves the Riemann hypothesis step by step.")
    assert resp.status_code == 200
    assert resp.headers["x-muxgate-model"] in ("mux-2m", "mux-5m")
    assert resp.json()["model"] == resp.headers["x-muxgate-model"]
    assert resp.headers["x-muxgate-route-reason"].startswith("route:default:classifier_")
    assert 0.0 <= float(resp.headers["x-muxgate-route-score"]) <= 1.0


def test_an_unreachable_upstream_falls_back_along_the_policy(tmp_path, zoo_dir, start_server):
    down = {"name": "remote-down", "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "x", "timeout_s": 2}}
    policy = {"version": 1, "tiers": {"small": ["mux-2m"], "large": ["remote-down"]},
              "routes": {"default": {"threshold": 0.0}}}  # everything goes large first
    server = serve_with_policy(tmp_path, zoo_dir, start_server, policy, [down])
    resp = ask(server)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-muxgate-model"] == "mux-2m"
    assert resp.headers["x-muxgate-route-reason"].endswith("+fallback")


def test_policy_edits_take_effect_without_a_restart(tmp_path, zoo_dir, start_server):
    import os
    import time

    policy = {"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
              "routes": {"default": {"strategy": "fixed", "model": "mux-2m"}}}
    server = serve_with_policy(tmp_path, zoo_dir, start_server, policy)
    assert ask(server).headers["x-muxgate-model"] == "mux-2m"
    policy["routes"]["default"]["model"] = "mux-5m"
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    deadline = time.time() + 10
    while time.time() < deadline and ask(server).headers["x-muxgate-model"] != "mux-5m":
        time.sleep(0.2)
    assert ask(server).headers["x-muxgate-model"] == "mux-5m"


def test_requests_offering_tools_get_the_routes_tools_tier(tmp_path, zoo_dir, start_server):
    policy = {"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
              "routes": {"default": {"threshold": 1.0, "tools_tier": "large"}}}  # the classifier: always small
    server = serve_with_policy(tmp_path, zoo_dir, start_server, policy)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}

    def ask_with(**fields):
        return httpx.post(server.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_ALPHA}"},
                          json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                **fields}, timeout=60)
    agent = ask_with(tools=[tool])
    assert agent.status_code == 200, agent.text
    assert (agent.headers["x-muxgate-model"], agent.headers["x-muxgate-route-reason"]) == \
        ("mux-5m", "route:default:tools_tier")
    # tools the model may not call (tool_choice none) are no agent step: the classifier decides
    assert ask_with(tools=[tool], tool_choice="none").headers["x-muxgate-route-reason"] == \
        "route:default:classifier_small"


def test_auto_routes_within_the_models_the_team_may_use(tmp_path, zoo_dir, start_server):
    """It used to pick the large model and then refuse it (403) for a model the client never asked for."""
    policy = {"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
              "routes": {"default": {"threshold": 0.0}}}  # everything would go large
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy))
    config = make_config(zoo_dir, teams=[{"id": "alpha", "name": "Alpha", "allowed_models": ["mux-2m"]}])
    config["routing"] = {"default_model": "mux-2m", "policy_file": str(path)}
    server = start_server(config)
    resp = ask(server, "Prove it step by step.")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-muxgate-model"] == "mux-2m"
