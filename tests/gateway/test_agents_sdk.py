"""An agent framework end to end: the OpenAI Agents SDK (openai-agents) runs its tool loop
against a running muxgate through its Chat Completions model, on a remote upstream that returns
tool calls and on a zoo model whose call the engine's grammar forces. No network, no tracing."""

import asyncio
import json
from typing import Literal

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from loadtests import fake_upstream
from support import KEY_ALPHA

set_tracing_disabled(True)


def run_agent(base_url: str, model: str, tools, stream: bool, **agent_kw):
    async def go():
        client = AsyncOpenAI(base_url=base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=120)
        agent = Agent(name="assistant", instructions="Answer with the tools.", tools=tools,
                      model=OpenAIChatCompletionsModel(model=model, openai_client=client), **agent_kw)
        config = RunConfig(tracing_disabled=True)
        try:
            if not stream:
                return await Runner.run(agent, "What is the weather in Paris?", run_config=config, max_turns=4)
            result = Runner.run_streamed(agent, "What is the weather in Paris?", run_config=config, max_turns=4)
            async for _ in result.stream_events():
                pass
            return result
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agents_sdk_tool_loop_against_an_upstream_that_calls_tools(remote_gateway, stream):
    seen = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    result = run_agent(remote_gateway.base_url, "remote", [get_weather], stream,
                       model_settings=ModelSettings(tool_choice="required", max_tokens=64))
    assert seen == ["Paris"]  # the fake's example argument for a string
    # the tool's output went back as a tool message answering the call; the final answer quotes it
    assert result.final_output == "The tool said: sunny in Paris"
    last = fake_upstream.RECEIVED[-1]
    assert [m["role"] for m in last["messages"]][-2:] == ["assistant", "tool"]
    call = last["messages"][-2]["tool_calls"][0]
    assert last["messages"][-1]["tool_call_id"] == call["id"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agents_sdk_on_a_zoo_model_with_tool_choice_required(gateway, stream):
    # a random-weight model: only the engine's grammar makes its answer a valid call of this tool
    seen = []

    @function_tool
    def get_weather(unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather in Paris, in a unit."""
        seen.append(unit)
        return f"21 degrees {unit}"

    result = run_agent(gateway.base_url, "mux-2m", [get_weather], stream, tool_use_behavior="stop_on_first_tool",
                       # room for the whole call: the zoo's byte-level tokens make one ~70 tokens long
                       model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                                                    temperature=0))
    assert len(seen) == 1 and seen[0] in ("celsius", "fahrenheit")
    assert result.final_output == f"21 degrees {seen[0]}"
