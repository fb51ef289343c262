"""LangChain's ChatOpenAI against a running muxgate: `bind_tools` sends OpenAI's tool shapes, the
fake upstream answers with calls, LangChain parses them into `tool_calls`, and the tool's result
goes back as a ToolMessage that the next request must (and does) match to its call. No network;
LangSmith tracing off."""

import os

import pytest

from loadtests import fake_upstream
from support import KEY_ALPHA

os.environ["LANGCHAIN_TRACING_V2"] = "false"
os.environ["LANGSMITH_TRACING"] = "false"


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_openai_bind_tools_round_trip(remote_gateway, stream):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="remote", base_url=remote_gateway.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0,
                     timeout=60, max_tokens=64, streaming=stream)
    with_tools = llm.bind_tools([get_weather], tool_choice="get_weather")
    messages = [HumanMessage("What is the weather in Paris?")]
    reply = with_tools.invoke(messages)
    [call] = reply.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    assert fake_upstream.RECEIVED[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    messages += [reply, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])]
    final = with_tools.invoke(messages)
    assert final.content == "The tool said: sunny in Paris"
    sent = fake_upstream.RECEIVED[-1]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny in Paris"}
