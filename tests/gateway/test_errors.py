"""Every error is OpenAI's error body with the right status, through a real server."""

import json
import socket
import time

import httpx
import openai
import pytest

from support import ADMIN_KEY, KEY_ALPHA, make_config

AUTH = {"Authorization": f"Bearer {KEY_ALPHA}"}
CHAT = "/v1/chat/completions"


def post(gateway, body, headers=AUTH, path=CHAT, **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(gateway.base_url + path, content=content, headers={"content-type": "application/json",
                                                                           **headers}, timeout=60, **kw)


def assert_openai_error(resp, status, code=None, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code:
        assert err["code"] == code
    if param:
        assert err["param"] == param
    assert resp.headers["x-request-id"]
    return err


def chat(**kw):
    return {"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


def test_malformed_json_is_400(gateway):
    assert_openai_error(post(gateway, b'{"model": "mux-2m", '), 400, "invalid_json")


def test_invalid_utf8_is_400(gateway):
    assert_openai_error(post(gateway, b'{"model": "\xff\xfe"}'), 400, "invalid_json")


def test_nan_and_infinity_are_400(gateway):
    assert_openai_error(post(gateway, b'{"model":"mux-2m","messages":[{"role":"user","content":"x"}],'
                                      b'"temperature": NaN}'), 400)
    assert_openai_error(post(gateway, b'{"model":"mux-2m","messages":[{"role":"user","content":"x"}],'
                                      b'"top_p": Infinity}'), 400)


def test_top_level_must_be_an_object(gateway):
    assert_openai_error(post(gateway, b"[1, 2]"), 400)


@pytest.mark.parametrize("body,param", [
    (chat(temperature=-1), "temperature"),
    (chat(temperature=3), "temperature"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens="many"), "max_tokens"),
    (chat(top_p=0), "top_p"),
    (chat(n=9), "n"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ({"model": "mux-2m", "messages": []}, "messages"),
    ({"model": "mux-2m"}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    (chat(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
    (chat(stream="maybe"), "stream"),  # a field whose name starts like a type tag ('str') is still named
    (chat(stop=7), "stop"),
])
def test_schema_violations_are_400_naming_the_field(gateway, body, param):
    err = assert_openai_error(post(gateway, body), 400, param=param)
    assert param.split(".")[0] in err["message"]


def test_unknown_field_is_400_unrecognized_argument(gateway):
    err = assert_openai_error(post(gateway, chat(frobnicate=True)), 400, param="frobnicate")
    assert "Unrecognized request argument supplied: frobnicate" in err["message"]


def test_unsupported_feature_is_refused_not_ignored(gateway):
    # the legacy function-calling fields (replaced by tools) are refused, not silently dropped
    assert_openai_error(post(gateway, chat(functions=[{"name": "f"}])), 400, param="functions")


def test_unknown_model_is_404(gateway):
    assert_openai_error(post(gateway, chat(model="gpt-9")), 404, "model_not_found", "model")


def test_missing_and_invalid_keys_are_401(gateway):
    err = assert_openai_error(post(gateway, chat(), headers={}), 401, "invalid_api_key")
    assert "API key" in err["message"]
    err = assert_openai_error(post(gateway, chat(), headers={"Authorization": "Bearer mg-wrong-key-123456"}), 401)
    assert "mg-wrong-key" not in err["message"]  # never echo a secret back
    assert_openai_error(post(gateway, chat(), headers={"Authorization": "Basic abc"}), 401)
    resp = httpx.get(gateway.base_url + "/v1/models")
    assert_openai_error(resp, 401)


def test_auth_is_checked_before_the_body(gateway):
    assert_openai_error(post(gateway, b"not json", headers={}), 401)


def test_body_too_large_is_413(gateway):
    big = chat(messages=[{"role": "user", "content": "x" * 1_100_000}])
    assert_openai_error(post(gateway, big), 413, "request_too_large")


def test_body_too_large_without_content_length_is_413(gateway):
    def body():
        for _ in range(40):
            yield b"x" * 65536
    resp = httpx.post(gateway.base_url + CHAT, content=body(), headers=AUTH, timeout=60)
    assert_openai_error(resp, 413)


def test_prompt_longer_than_context_is_400_with_the_limits(gateway):
    err = assert_openai_error(post(gateway, chat(max_tokens=5000)), 400, "context_length_exceeded")
    assert "2048" in err["message"]


def test_unknown_path_and_wrong_method(gateway):
    assert_openai_error(httpx.get(gateway.base_url + "/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(gateway.base_url + CHAT), 405)


def test_openai_client_raises_typed_errors(gateway):
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="mg-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": "x"}], temperature=5)


class ExplodingBackend:
    """A backend whose generate fails in a way the pool never types (a bug, a lost connection)."""

    def __init__(self, exc):
        self.exc = exc

    async def generate(self, model, req):
        raise self.exc
        yield  # pragma: no cover

    async def models(self):
        return []

    async def stats(self):
        return []

    async def close(self):
        pass


def test_backend_failure_is_502_with_request_id(zoo_dir, start_server):
    server = start_server(make_config(zoo_dir), backend=ExplodingBackend(RuntimeError("boom")))
    resp = post(server, chat())
    err = assert_openai_error(resp, 502, "backend_error")
    assert resp.headers["x-request-id"] in err["message"]
    assert "boom" not in err["message"]


def test_pool_unavailable_is_503_with_retry_after(zoo_dir, start_server):
    from workers.types import PoolOverloaded

    server = start_server(make_config(zoo_dir), backend=ExplodingBackend(PoolOverloaded("busy", retry_after=3)))
    resp = post(server, chat())
    assert_openai_error(resp, 503, "pool_overloaded")
    assert resp.headers["retry-after"] == "3"


def test_corrupt_checkpoint_is_503_and_other_models_keep_serving(zoo_dir, tmp_path, start_server):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(zoo_dir / "mux-2m", broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    config = make_config(zoo_dir)
    config["models"] = config["models"] + [{"name": "broken", "path": str(broken)}]
    server = start_server(config)
    err = assert_openai_error(post(server, chat(model="broken")), 503, "model_load_failed")
    assert "broken" in err["message"]
    assert post(server, chat(model="mux-2m")).status_code == 200


def test_client_disconnect_mid_stream_frees_the_engine_slot(gateway):
    body = json.dumps(chat(model="mux-5m", max_tokens=1500, stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY_ALPHA}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b"data:") < 3:
        received += sock.recv(4096)
    pool = gateway.backend.default.pool
    assert pool.stats()["in_flight"].get("mux-5m") == 1
    sock.close()
    engine = pool._resident["mux-5m"].engine
    deadline = time.time() + 20
    while (pool.stats()["in_flight"].get("mux-5m") or engine.in_flight) and time.time() < deadline:
        time.sleep(0.05)
    assert not pool.stats()["in_flight"].get("mux-5m")
    assert engine.in_flight == 0
    while engine._running and time.time() < deadline:  # dropped at the scheduler's next step
        time.sleep(0.05)
    assert engine._running == [] and not engine._waiting


def test_client_disconnect_while_waiting_for_a_non_streamed_answer_is_clean(gateway):
    import httpx as _httpx

    body = json.dumps(chat(model="mux-5m", max_tokens=1500)).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY_ALPHA}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    pool = gateway.backend.default.pool
    deadline = time.time() + 20
    while not pool.stats()["in_flight"].get("mux-5m") and time.time() < deadline:
        time.sleep(0.02)
    sock.close()
    engine = pool._resident["mux-5m"].engine
    while (pool.stats()["in_flight"].get("mux-5m") or engine.in_flight) and time.time() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0
    metrics = _httpx.get(gateway.base_url + "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'status="client_disconnect"' in metrics
    assert 'code="internal_error"' not in metrics
