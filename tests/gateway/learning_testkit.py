"""Helpers of the routing-outcome tests (feedback, shadow evaluation, the router CLI): a gateway
config with a classifier route over two zoo tiers, requests through the official client, and
reads of the gateway's own store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import yaml

from support import make_config, wait_until

PAIR = "mux-2m->mux-5m"  # the pair of learning_config's route

SECRET_PROMPT = "the-quokka-password-is-marmalade"


def stored(config: dict, action):
    """Run ``action(store)`` against the gateway's own store file."""
    from gateway.store import open_store

    async def main():
        store = open_store(config["store"]["url"])
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def wait_routed(config: dict, team: str, request_id: str, timeout_s: float = 10.0):
    return wait_until(lambda: stored(config, lambda s: s.routed_request(team, request_id)), timeout_s,
                      what=f"{request_id} to be recorded")


def learning_config(tmp_path: Path, zoo_dir: Path, threshold: float = 1.0, **overrides) -> dict:
    """Two zoo tiers under a classifier route; threshold 1.0 sends everything small, 0.0 large."""
    policy = tmp_path / "routing.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
                                      "routes": {"default": {"threshold": threshold}}}))
    config = make_config(zoo_dir, teams=[{"id": "alpha"}, {"id": "beta", "store_prompts": True}], **overrides)
    config["routing"] = {"default_model": "mux-2m", "policy_file": str(policy)}
    return config


def ask(server, key: str, content: str = "hello there"):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.create(model="auto", messages=[{"role": "user", "content": content}],
                                          max_tokens=4)


def feedback(server, key: str | None, body):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    kwargs = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(server.base_url + "/v1/feedback", headers=headers, timeout=30, **kwargs)


def features(text: str) -> bytes:
    from policies.classifier import ComplexityClassifier
    from policies.outcome import encode_features

    return encode_features(ComplexityClassifier.shipped().features(messages=[{"role": "user", "content": text}]))


def seed_outcomes(config, n: int, source: str = "shadow", team: str = "alpha") -> None:
    """n outcomes of learning_config's pair in the gateway's store: the large tier wins on every other one."""
    from policies.outcome import Outcome

    async def write(store):
        for i in range(n):
            hard = i % 2 == 0
            await store.record_outcome(Outcome(
                f"r{i}", team, PAIR, "small", 0.0 if hard else 1.0, 1.0 if hard else 0.5, source,
                features(("prove the theorem " if hard else "say hi ") + str(i)), 1_700_000_000 + i))
    stored(config, write)
