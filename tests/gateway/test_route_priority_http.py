"""A route's `priority`, through a real server and the openai client: the pool is asked to weigh
the route's team's requests by share x 2**priority (`auto` and explicit models alike), other
teams keep their plain share, and an edit of the policy file changes it without a restart."""

import os
import time

import openai
import yaml

from gateway.upstreams.remote import UpstreamBackend
from support import KEY_ALPHA, KEY_BETA, make_config, wait_until
from workers.types import GenerationRequest


def test_a_routes_priority_reaches_the_pool_and_follows_policy_edits(tmp_path, zoo_dir, start_server):
    policy = {"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
              "routes": {"default": {"strategy": "fixed", "model": "mux-2m"},
                         "urgent": {"strategy": "fixed", "model": "mux-2m", "priority": 2}},
              "teams": {"alpha": {"route": "urgent"}}}
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy))
    config = make_config(zoo_dir, teams=[{"id": "alpha", "share": 3}, {"id": "beta"}])
    config["routing"] = {"default_model": "mux-2m", "policy_file": str(path)}
    server = start_server(config)
    backend = server.app.state.gateway.completions.backend
    seen = []
    inner = backend.generate

    def spy(model, req):
        seen.append((req.team, req.weight, req.priority))
        return inner(model, req)

    backend.generate = spy

    def sent(key, model="auto"):
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=60)
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        return seen[-1]

    assert sent(KEY_ALPHA) == sent(KEY_ALPHA, "mux-5m") == ("alpha", 3.0, 2)
    assert sent(KEY_BETA) == ("beta", 1.0, 0)

    policy["routes"]["urgent"]["priority"] = -1
    path.write_text(yaml.safe_dump(policy))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a distinct mtime, however fast
    wait_until(lambda: sent(KEY_ALPHA)[2] == -1, timeout_s=10, what="the edited priority")
    assert sent(KEY_ALPHA, "mux-5m") == ("alpha", 3.0, -1)
    assert sent(KEY_BETA) == ("beta", 1.0, 0)


def test_a_remote_upstream_is_not_sent_the_priority():
    """It orders the pool's own queue; an OpenAI-compatible API would refuse (or misread) the field."""
    upstream = UpstreamBackend("remote", "http://127.0.0.1:9/v1", "fake")
    plain = GenerationRequest("r", messages=[{"role": "user", "content": "hi"}], team="alpha", weight=3.0)
    urgent = GenerationRequest("r", messages=[{"role": "user", "content": "hi"}], team="alpha", weight=3.0,
                               priority=2)
    assert upstream._body(urgent) == upstream._body(plain)
    assert "priority" not in upstream._body(urgent)[1]
