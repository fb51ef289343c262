"""The agent part of the chat API on the pool's own engine (zoo models), through a real server and
the official client: n choices with logprobs, streamed exactly as answered whole, usage over every
choice, json_schema answers that validate."""

import json

import jsonschema
import pytest

from chat_views import reassemble, whole

ASK = [{"role": "user", "content": "Tell me about the weather."}]


def test_n_choices_stream_exactly_as_the_whole_answer_and_usage_counts_them_all(openai_client):
    args = dict(model="mux-5m", messages=ASK, n=3, max_tokens=6, seed=11, temperature=1.0, logprobs=True,
                top_logprobs=2)
    out = openai_client.chat.completions.create(**args)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) > 1  # three samples, not one answer three times
    for c in out.choices:
        assert c.finish_reason in ("stop", "length")
        assert "".join(e.token for e in c.logprobs.content) == c.message.content
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in c.logprobs.content)
    # one logprob entry per sampled token: usage is every choice's tokens, the prompt once
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)
    single = openai_client.chat.completions.create(model="mux-5m", messages=ASK, max_tokens=1)
    assert out.usage.prompt_tokens == single.usage.prompt_tokens

    chunks = list(openai_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    streamed, answered = reassemble(chunks), {c.index: whole(c) for c in out.choices}
    # the same tokens; their logprobs agree to bf16 noise (another batch, other kernels' rounding)
    assert numbers(streamed) == pytest.approx(numbers(answered), abs=0.05)
    assert without_numbers(streamed) == without_numbers(answered)
    assert chunks[-1].usage.model_dump() == out.usage.model_dump()


def numbers(view):
    return [e["logprob"] for i in sorted(view) for e in view[i]["logprobs"]] + \
        [t["logprob"] for i in sorted(view) for e in view[i]["logprobs"] for t in e["top_logprobs"]]


def without_numbers(view):
    def strip(entry):
        return {**entry, "logprob": None, "top_logprobs": [{**t, "logprob": None} for t in entry["top_logprobs"]]}
    return {i: {**v, "logprobs": [strip(e) for e in v["logprobs"]]} for i, v in view.items()}


def test_json_schema_answers_validate_on_a_random_weight_model(openai_client):
    schema = {"type": "object", "properties": {
        "sky": {"enum": ["clear", "cloudy", "rain"]},
        "temp": {"type": "integer", "minimum": -30, "maximum": 45},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
        "required": ["sky", "temp", "tags"], "additionalProperties": False}
    for seed in range(3):
        out = openai_client.chat.completions.create(
            model="mux-2m", messages=ASK, max_tokens=80, seed=seed, response_format={
                "type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}})
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), schema)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["unit", "days"]}}}


def test_a_forced_tool_call_streams_as_answered_and_the_loop_closes(openai_client):
    args = dict(model="mux-2m", messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                max_tokens=200, temperature=0)
    out = openai_client.chat.completions.create(**args)
    choice = out.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    [call] = choice.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    chunks = list(openai_client.chat.completions.create(stream=True, **args))
    streamed = reassemble(chunks)
    assert streamed[0]["tool_calls"][0].pop("id").startswith("call_")  # each answer names its calls afresh
    answered = whole(choice)
    answered["tool_calls"][0].pop("id")
    assert streamed == {0: answered}
    # the agent's next step: the call and its result go back; the model answers (text or another call)
    follow = openai_client.chat.completions.create(model="mux-2m", tools=[WEATHER], max_tokens=8, messages=ASK + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees, sunny"}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert follow.usage.prompt_tokens > out.usage.prompt_tokens  # the call and its result are in the prompt


def test_admissions_prompt_bound_covers_a_tool_requests_real_prompt(openai_client, zoo_dir):
    # tools, a call and its result are templated into the prompt with text of the template's own
    # around them; the bound admission reserves with must still cover the real count, and the
    # rendered prompt's bytes (what bounds the tokens of any byte-level tokenizer)
    from transformers import AutoTokenizer

    from gateway.tenancy.estimate import prompt_token_bound
    from workers.tool_format import render_chat
    from workers.types import GenerationRequest

    tokenizer = AutoTokenizer.from_pretrained(str(zoo_dir / "mux-2m"))

    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}]
    for messages in (ASK, history):
        out = openai_client.chat.completions.create(model="mux-2m", messages=messages, tools=[WEATHER], max_tokens=1)
        req = GenerationRequest("r", messages=messages, tools=[WEATHER])
        bound = prompt_token_bound(req)
        assert out.usage.prompt_tokens <= bound
        assert len(render_chat(tokenizer, req).encode()) <= bound
