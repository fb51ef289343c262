"""Every request input that costs the gateway or the engine work in proportion to its size has a
documented bound, and going past it is a 400 naming the parameter (issue 19 item 5)."""

import dataclasses

import httpx
import pytest

from gateway.http.openai_api import MAX_MESSAGES, MAX_STOP_CHARS, MAX_TOKENS
from support import KEY_ALPHA, WrappedBackend, make_config


class UnknownContext(WrappedBackend):
    """The pool's models as a pool that cannot say their context length."""

    async def models(self):
        return [dataclasses.replace(m, context_length=None) for m in await self.inner.models()]


@pytest.fixture(scope="module")
def bounded_gateway(zoo_dir):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend
    from support import ServerThread

    # a budget makes admission hold a reservation row (its worst-case tokens an SQLite INTEGER)
    config = make_config(zoo_dir, teams=[{"id": "alpha", "budget_usd": 100.0}])
    cfg = parse_config(config)
    with ServerThread(create_app(cfg, UnknownContext(make_backend(cfg, use_ray=False)))) as server:
        yield server


def _post(gateway, body, path="/v1/chat/completions"):
    return httpx.post(gateway.base_url + path, json=body, timeout=60,
                      headers={"authorization": f"Bearer {KEY_ALPHA}"})


def _chat(**fields):
    return {"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}], **fields}


def _refused(resp, param):
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return error["message"]


def test_a_huge_max_tokens_on_a_model_of_unknown_context_is_a_400_not_a_500(bounded_gateway):
    for path, body in (("/v1/chat/completions", _chat(max_tokens=2**70)),
                       ("/v1/chat/completions", _chat(max_completion_tokens=2**70)),
                       ("/v1/completions", {"model": "mux-2m", "prompt": "hi", "max_tokens": 2**70})):
        param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        assert str(MAX_TOKENS) in _refused(_post(bounded_gateway, body, path), param)
    ok = _post(bounded_gateway, _chat(max_tokens=4))
    assert ok.status_code == 200, ok.text


def test_a_stop_string_longer_than_the_bound_is_a_400(bounded_gateway):
    message = _refused(_post(bounded_gateway, _chat(stop=["x" * (MAX_STOP_CHARS + 1)])), "stop")
    assert str(MAX_STOP_CHARS) in message
    _refused(_post(bounded_gateway, _chat(stop="y" * (MAX_STOP_CHARS + 1))), "stop")
    ok = _post(bounded_gateway, _chat(stop=["z" * MAX_STOP_CHARS], max_tokens=4))
    assert ok.status_code == 200, ok.text


def test_more_messages_than_the_bound_is_a_400(bounded_gateway):
    many = [{"role": "user", "content": "a"}] * (MAX_MESSAGES + 1)
    assert str(MAX_MESSAGES) in _refused(_post(bounded_gateway, _chat(messages=many)), "messages")
