"""Agents through muxgate to a remote upstream (the fake one, which answers tool calls and JSON):
every agent field reaches the upstream as sent, and tool calls, choices, logprobs and finish
reasons come back to the official client unchanged, streamed and not."""

import json

import httpx
import jsonschema
import openai
import pytest

from loadtests import fake_upstream
from chat_views import reassemble, whole
from support import KEY_ALPHA

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                      "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "integer", "minimum": -12}}}}}
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]


@pytest.fixture
def client(remote_gateway):
    return openai.OpenAI(base_url=remote_gateway.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)


def test_every_agent_field_reaches_the_upstream_as_sent(client):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"}]
    sent = dict(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_time"}},
                parallel_tool_calls=False, n=2, logprobs=True, top_logprobs=2, presence_penalty=0.5,
                frequency_penalty=-0.5, logit_bias={"42": 5}, user="agent-7",
                response_format={"type": "json_schema", "json_schema": {
                    "name": "report", "strict": True, "schema": {"type": "object", "properties": {}}}})
    out = client.chat.completions.create(model="remote", messages=history, max_tokens=20, **sent)
    got = fake_upstream.RECEIVED[-1]
    for field, value in sent.items():
        assert got[field] == value, field
    assert got["messages"] == history  # null content, tool_calls and tool_call_id included
    assert out.choices[0].message.content == "The tool said: 21 C, sunny"

    client.completions.create(model="remote", prompt="x", max_tokens=3, n=2, logprobs=3, presence_penalty=1.5,
                              logit_bias={"7": -100})
    got = fake_upstream.RECEIVED[-1]
    assert (got["n"], got["logprobs"], got["presence_penalty"], got["logit_bias"]) == (2, 3, 1.5, {"7": -100})
    assert "tools" not in got


def test_plain_requests_send_no_agent_fields_upstream(client):
    client.chat.completions.create(model="remote", messages=ASK, max_tokens=3)
    got = fake_upstream.RECEIVED[-1]
    assert not {"tools", "tool_choice", "n", "logprobs", "response_format", "logit_bias",
                "presence_penalty"} & set(got)


def test_tool_calls_come_back_whole_and_streamed_identically(client):
    args = dict(model="remote", messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required",
                parallel_tool_calls=True, max_tokens=50)
    out = client.chat.completions.create(**args)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2 and all(c.id and c.type == "function" for c in calls)
    for call, tool in zip(calls, (WEATHER, CLOCK)):
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    assert out.usage.completion_tokens == fake_upstream_tokens(calls)

    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert reassemble(chunks) == {0: whole(choice)}
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    # the first delta of each call names it and carries its id; argument fragments follow
    firsts = [c for ch in chunks for choice in ch.choices for c in choice.delta.tool_calls or [] if c.id]
    assert [(c.index, c.function.name, c.function.arguments) for c in firsts] == \
        [(0, "get_weather", ""), (1, "get_time", "")]


def fake_upstream_tokens(calls) -> int:
    # the fake counts each streamed argument fragment as one token (about four per call)
    from loadtests.fake_agent_upstream import _pieces

    return sum(len(_pieces(c.function.arguments)) for c in calls)


def test_n_choices_with_logprobs_stream_to_exactly_the_whole_answer(client):
    args = dict(model="remote", messages=ASK, n=3, logprobs=True, top_logprobs=2, max_tokens=30)
    out = client.chat.completions.create(**args)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.message.content for c in out.choices] == [f"Hello from the fake upstream. {i}" for i in range(3)]
    for c in out.choices:
        assert "".join(e.token for e in c.logprobs.content) == c.message.content
        assert all(len(e.top_logprobs) == 2 for e in c.logprobs.content)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert reassemble(chunks) == {c.index: whole(c) for c in out.choices}
    # usage counts every choice's tokens, the prompt once
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)
    assert chunks[-1].usage.model_dump() == out.usage.model_dump()


def test_json_schema_answers_validate(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                               "days": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                                               "sky": {"enum": ["clear", "cloudy"]}},
              "required": ["city", "days", "sky"]}
    out = client.chat.completions.create(model="remote", messages=ASK, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "forecast", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)


def test_legacy_completions_logprobs_are_the_parallel_lists(client):
    out = client.completions.create(model="remote", prompt="x", max_tokens=5, logprobs=2)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    streamed = list(client.completions.create(model="remote", prompt="x", max_tokens=5, logprobs=2, stream=True))
    tokens = [t for c in streamed for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens]
    offsets = [o for c in streamed for ch in c.choices if ch.logprobs for o in ch.logprobs.text_offset]
    assert (tokens, offsets) == (lp.tokens, lp.text_offset)


def test_the_ledger_records_tool_calls_and_the_enforced_format(remote_gateway, client):
    client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required",
                                   parallel_tool_calls=True, max_tokens=50, user="ledger-check")
    client.chat.completions.create(model="remote", messages=ASK, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    client.chat.completions.create(model="remote", messages=ASK, max_tokens=3)
    records = httpx.get(remote_gateway.base_url + "/v1/usage", params={"from": "2000-01-01"},
                        headers={"authorization": f"Bearer {KEY_ALPHA}"}).json()["data"]
    last = [(r["tool_calls"], r["constrained"]) for r in records if r["routed_model"] == "remote"][-3:]
    assert last == [(2, "tool_call"), (0, "json_schema"), (0, None)]
