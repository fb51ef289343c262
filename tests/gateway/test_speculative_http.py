"""Speculative decoding opted in by a route, through a real server and the openai client: the
team on that route gets the same greedy answers, faster per large-model forward, and says so."""

import time

import httpx
import openai
import pytest
import yaml

from support import ADMIN_KEY, KEY_ALPHA, KEY_BETA, TEST_ZOO, make_config

PAIR = ["mux-40m", "mux-40m-draft"]


@pytest.fixture
def server(tmp_path, zoo_dir, start_server):
    from workers.zoo import build_zoo

    build_zoo(TEST_ZOO, PAIR, progress=False)
    policy = {
        "version": 1,
        "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
        "routes": {
            "default": {"large_share": 0.3},
            "fast": {"large_share": 0.3, "speculative": {"drafts": {"mux-40m": "mux-40m-draft"}, "draft_tokens": 4}},
        },
        "teams": {"alpha": {"route": "fast"}},
    }
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy))
    config = make_config(zoo_dir)
    # float32: speculated and plain answers are then identical (bf16 verify forwards round differently)
    config["models"] += [{"name": n, "zoo": True, "dtype": "float32"} for n in PAIR]
    config["routing"] = {"default_model": "mux-2m", "policy_file": str(path)}
    return start_server(config)


def pool_stats(server):
    resp = httpx.get(server.base_url + "/v1/pool", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    resp.raise_for_status()
    return resp.json()[0]


def ask(server, key, temperature=0.0):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=120)
    resp = client.chat.completions.with_raw_response.create(
        model="mux-40m", messages=[{"role": "user", "content": "Tell me about the sea."}],
        max_tokens=24, temperature=temperature, seed=3)
    return resp.headers, resp.parse()


def test_a_speculative_route_answers_exactly_as_the_model_alone(server):
    headers, first = ask(server, KEY_ALPHA)
    assert headers["x-muxgate-draft-model"] == "mux-40m-draft"
    deadline = time.time() + 60  # the draft loads in the background after the first request
    while "mux-40m-draft" not in pool_stats(server)["resident"] and time.time() < deadline:
        time.sleep(0.2)
    assert "mux-40m-draft" in pool_stats(server)["resident"]

    _, speculated = ask(server, KEY_ALPHA)
    beta_headers, plain = ask(server, KEY_BETA)  # team beta's route does not speculate
    assert "x-muxgate-draft-model" not in beta_headers
    assert speculated.choices[0].message.content == plain.choices[0].message.content == first.choices[0].message.content
    assert speculated.usage.completion_tokens == plain.usage.completion_tokens == 24
    drafted = pool_stats(server)["draft_tokens"]["mux-40m"]
    assert 0 < drafted["accepted"] <= drafted["proposed"]

    # a sampled request on the speculative route keeps the answer its seed gives anywhere
    _, sampled_alpha = ask(server, KEY_ALPHA, temperature=0.9)
    _, sampled_beta = ask(server, KEY_BETA, temperature=0.9)
    assert sampled_alpha.choices[0].message.content == sampled_beta.choices[0].message.content
    assert pool_stats(server)["draft_tokens"]["mux-40m"] == drafted


def test_a_policy_cannot_name_a_model_as_its_own_draft(tmp_path):
    from policies.policy import PolicyError, parse_policy

    bad = {"version": 1, "tiers": {"small": ["a"]}, "routes": {"default": {
        "strategy": "fixed", "model": "a", "speculative": {"drafts": {"a": "a"}}}}}
    with pytest.raises(PolicyError, match="routes.default.speculative: .*cannot draft for itself: a"):
        parse_policy(bad, "p.yaml")
    unknown = {"version": 1, "tiers": {"small": ["a"]}, "routes": {"default": {
        "strategy": "fixed", "model": "a", "speculative": {"drafts": {"a": "ghost"}}}}}
    with pytest.raises(PolicyError, match="ghost"):
        parse_policy(unknown, "p.yaml", known_models={"a"})
