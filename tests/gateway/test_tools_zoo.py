"""Tool calls on the pool's own engine (a random-weight zoo model) through a real server and the
official client: forced calls validate, a stream reassembles to the whole answer, the full loop
(assistant tool_calls -> tool message -> answer) runs, and the OpenAI Agents SDK drives it."""

import asyncio
import json
from typing import Literal

import jsonschema
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, RunConfig, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from chat_views import reassemble, whole
from support import KEY_ALPHA

set_tracing_disabled(True)

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Forecast for a city",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def ask(client, **kw):
    return client.chat.completions.create(model="mux-2m", messages=kw.pop("messages", ASK), tools=TOOLS,
                                          temperature=1.0, **{"max_tokens": 80, **kw})


def test_required_and_named_calls_validate_and_stream_as_answered_whole(openai_client):
    for seed in range(4):
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            args = dict(seed=seed, tool_choice=choice, parallel_tool_calls=False)
            out = ask(openai_client, **args)
            c = out.choices[0]
            assert c.finish_reason == "tool_calls", c
            assert not c.message.content and len(c.message.tool_calls) == 1
            call = c.message.tool_calls[0]
            assert call.id.startswith("call_") and call.type == "function"
            if isinstance(choice, dict):
                assert call.function.name == "get_weather"
            schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)
            jsonschema.validate(json.loads(call.function.arguments), schema)
            streamed = reassemble(list(ask(openai_client, stream=True, **args)))[0]
            answered = whole(c)
            # ids are fresh per answer; everything else is the same seeded answer
            assert streamed["tool_calls"][0].pop("id").startswith("call_")
            answered["tool_calls"][0].pop("id")
            assert {**streamed, "content": streamed["content"] or None} == {**answered, "content": answered["content"] or None}


def test_a_full_tool_loop_answers_after_the_tool_message(openai_client):
    first = ask(openai_client, seed=1, tool_choice="required", parallel_tool_calls=False).choices[0].message
    call = first.tool_calls[0]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call.id, "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    final = ask(openai_client, messages=history, seed=1, max_tokens=12, tool_choice="none")
    choice = final.choices[0]
    assert choice.finish_reason == "length" and choice.message.content and not choice.message.tool_calls
    # the history (the call and its result) was part of the prompt
    assert final.usage.prompt_tokens > ask(openai_client, seed=1, max_tokens=1, tool_choice="none").usage.prompt_tokens


def test_agents_sdk_runs_its_tool_loop_on_a_zoo_model(gateway):
    seen = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    async def go():
        client = AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=120)
        # after the required first call the SDK resets tool_choice, so the model answers in text
        agent = Agent(name="assistant", instructions="Answer with the tools.", tools=[get_weather],
                      model=OpenAIChatCompletionsModel(model="mux-2m", openai_client=client),
                      model_settings=ModelSettings(tool_choice="required", max_tokens=120, temperature=1.0, seed=3,
                                                   parallel_tool_calls=False))
        try:
            return await Runner.run(agent, "What is the weather in Paris?", run_config=RunConfig(tracing_disabled=True),
                                    max_turns=4)
        finally:
            await client.close()

    result = asyncio.run(go())
    assert len(seen) == 1 and seen[0] in ("Paris", "Rome")
    assert isinstance(result.final_output, str) and result.final_output
