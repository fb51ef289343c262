"""Bad agent requests (tools, tool_choice, tool messages, response_format, n, logprobs, logit_bias)
are 400s naming the field, through a real server and the official client, and none of them
reaches a backend: neither the pool nor a remote upstream is asked anything."""

import json

import httpx
import openai
import pytest

from support import KEY_ALPHA, WrappedBackend, make_config

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
ASK = [{"role": "user", "content": "hi"}]


class CountingBackend(WrappedBackend):
    """The real backend, counting the requests that reach it."""

    calls = 0

    def generate(self, model, req):
        self.calls += 1
        return self.inner.generate(model, req)


@pytest.fixture(scope="module")
def counted(zoo_dir):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend
    from support import ServerThread

    cfg = parse_config(make_config(zoo_dir))
    backend = CountingBackend(make_backend(cfg, use_ray=False))
    with ServerThread(create_app(cfg, backend)) as server:
        server.backend = backend
        yield server


def nested(levels: int) -> dict:
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def call(name="lookup", call_id="c1"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


BAD = [
    ("invalid parameters schema", dict(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "objekt"}}}]), "tools.0.function.parameters"),
    ("parameters not an object", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": [1]}}]),
     "tools.0.function.parameters"),
    ("tool name with a space", dict(tools=[{"type": "function", "function": {"name": "look up"}}]),
     "tools.0.function.name"),
    ("two tools of one name", dict(tools=[TOOL, TOOL]), "tools.1.function.name"),
    ("too many tools", dict(tools=[{"type": "function", "function": {"name": f"t{i}"}} for i in range(129)]),
     "tools"),
    ("schema nested too deep", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": nested(40)}}]),
     "tools.0.function.parameters"),
    ("schema too large", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                         for i in range(700)}}}}]), "tools.0.function.parameters"),
    ("tool definitions too large together", dict(tools=[{"type": "function", "function": {
        "name": f"t{t}", "parameters": {"type": "object", "properties": {
            f"p{i}": {"type": "string", "description": "x" * 100} for i in range(300)}}}} for t in range(8)]),
     "tools"),
    ("unknown tool in tool_choice", dict(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice"),
    ("unknown tool_choice mode", dict(tools=[TOOL], tool_choice="always"), "tool_choice"),
    ("tool_choice without tools", dict(tool_choice="required"), "tool_choice"),
    ("tool message without a matching call", dict(messages=ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call(call_id="c1")]},
        {"role": "tool", "tool_call_id": "c2", "content": "42"}]), "messages.2.tool_call_id"),
    ("tool message before any call", dict(messages=[{"role": "tool", "tool_call_id": "c1", "content": "42"}]),
     "messages.0.tool_call_id"),
    ("tool message without its call id", dict(messages=ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call()]}, {"role": "tool", "content": "42"}]),
     "messages.2.tool_call_id"),
    ("tool calls on a user message", dict(messages=[{"role": "user", "content": "x", "tool_calls": [call()]}]),
     "messages.0.tool_calls"),
    ("null content without tool calls", dict(messages=[{"role": "user", "content": None}]), "messages.0.content"),
    ("json_schema without its schema", dict(response_format={"type": "json_schema"}), "response_format"),
    ("invalid response schema", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"minimum": "zero"}}}}}),
     "response_format.json_schema.schema"),
    ("oversized response schema", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ["y" * 70_000]}}}), "response_format.json_schema.schema"),
    ("unknown response format", dict(response_format={"type": "yaml"}), "response_format.type"),
    ("a $ref that resolves nowhere", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}),
     "response_format.json_schema.schema"),
    ("a remote $ref", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "$ref": "https://example.com/schema.json"}}}]), "tools.0.function.parameters"),
    ("an invalid regex pattern", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}}}]),
     "tools.0.function.parameters"),
    ("top_logprobs without logprobs", dict(top_logprobs=2), "top_logprobs"),
    ("top_logprobs above 20", dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("n above the limit", dict(n=9), "n"),
    ("presence_penalty out of range", dict(presence_penalty=2.5), "presence_penalty"),
    ("frequency_penalty out of range", dict(frequency_penalty=-3), "frequency_penalty"),
    ("logit_bias key not a token id", dict(logit_bias={"hello": 1}), "logit_bias"),
    ("logit_bias value out of range", dict(logit_bias={"10": 150}), "logit_bias"),
    ("logit_bias too large", dict(logit_bias={str(i): 1 for i in range(301)}), "logit_bias"),
]


@pytest.mark.parametrize("what,fields,param", BAD, ids=[b[0] for b in BAD])
def test_bad_agent_input_is_400_naming_the_field_and_reaches_no_backend(counted, what, fields, param):
    body = {"model": "mux-2m", "messages": ASK, "max_tokens": 2, **fields}
    before = counted.backend.calls
    resp = httpx.post(counted.base_url + "/v1/chat/completions", content=json.dumps(body), timeout=60,
                      headers={"authorization": f"Bearer {KEY_ALPHA}", "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["param"], err["type"]) == (param, "invalid_request_error")
    assert param in err["message"]
    assert counted.backend.calls == before


def test_the_official_client_raises_bad_request_for_bad_tools(counted):
    client = openai.OpenAI(base_url=counted.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0)
    before = counted.backend.calls
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mux-2m", messages=ASK, tools=[TOOL],
                                       tool_choice={"type": "function", "function": {"name": "missing"}})
    assert "missing" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mux-2m", prompt="x", logprobs=6)  # the legacy endpoint allows 0-5
    assert counted.backend.calls == before


def test_a_valid_agent_request_does_reach_the_backend(counted):
    # the counter above counts: the same request without its fault is dispatched, a small body
    # parsed on the event loop and a large one (many tools) in a worker thread alike
    from gateway.http.openai_api import OFF_LOOP_PARSE_BYTES

    many = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 200,
                                              "parameters": TOOL["function"]["parameters"]}} for i in range(100)]
    assert len(json.dumps(many)) > OFF_LOOP_PARSE_BYTES
    for tools in ([TOOL], many):
        before = counted.backend.calls
        httpx.post(counted.base_url + "/v1/chat/completions", timeout=60,
                   headers={"authorization": f"Bearer {KEY_ALPHA}"},
                   json={"model": "mux-2m", "messages": ASK, "max_tokens": 2, "tools": tools})
        assert counted.backend.calls == before + 1
