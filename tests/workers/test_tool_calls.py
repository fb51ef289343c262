"""Tool calls on a random-weight zoo model: forced calls (required / named) always name a tool and
carry arguments that validate; "auto" turns a call in the model's text into tool-call deltas and
never shows the call as text; deltas come in OpenAI's streamed shape."""

import asyncio
import json

import jsonschema
import pytest

import workers.engine as engine_module
from workers.tool_format import default_messages
from workers.tool_stream import ToolCallStream
from workers.types import GenerationRequest

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["a", "b"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD}}]
PARAMETERS = {"get_weather": WEATHER, "add": ADD}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def engine(engine_2m):
    return engine_2m


def run_all(engine, reqs):
    async def one(req):
        return [c async for c in engine.generate(req)]

    async def go():
        return await asyncio.gather(*[one(r) for r in reqs])
    return asyncio.run(go())


def assemble(chunks) -> tuple[str, list[dict]]:
    """Content and calls as a client rebuilds them from the streamed deltas."""
    text, calls = "", {}
    for c in chunks:
        text += c.text
        for delta in c.tool_calls or []:
            if "id" in delta:
                assert delta["id"].startswith("call_") and delta["type"] == "function"
                assert delta["function"]["arguments"] == "" and delta["index"] == len(calls)
                calls[delta["index"]] = {"id": delta["id"], "name": delta["function"]["name"], "arguments": ""}
            else:
                assert set(delta) == {"index", "function"}
                calls[delta["index"]]["arguments"] += delta["function"]["arguments"]
    return text, list(calls.values())


def tool_request(i, **kw):
    return GenerationRequest(f"t{i}", messages=MESSAGES, tools=TOOLS, temperature=1.0, seed=i, **{"max_tokens": 160, **kw})


def test_required_always_calls_a_tool_with_valid_arguments(engine):
    results = run_all(engine, [tool_request(i, tool_choice="required", parallel_tool_calls=False) for i in range(24)])
    names = set()
    for chunks in results:
        text, calls = assemble(chunks)
        assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].constrained == "tool_call"
        assert text == "" and len(calls) == 1
        jsonschema.validate(json.loads(calls[0]["arguments"]), PARAMETERS[calls[0]["name"]])
        names.add(calls[0]["name"])
    assert names == {"get_weather", "add"}  # the model chooses; the grammar only keeps it valid


def test_a_named_tool_is_the_one_called(engine):
    choice = {"type": "function", "function": {"name": "add"}}
    for chunks in run_all(engine, [tool_request(i, tool_choice=choice) for i in range(8)]):
        text, calls = assemble(chunks)
        assert chunks[-1].finish_reason == "tool_calls"
        assert [c["name"] for c in calls] == ["add"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), ADD)


def test_parallel_calls_may_be_several_and_each_validates(engine):
    counts = []
    for chunks in run_all(engine, [tool_request(i, tool_choice="required", parallel_tool_calls=True) for i in range(16)]):
        _, calls = assemble(chunks)
        if chunks[-1].finish_reason == "tool_calls":
            counts.append(len(calls))
            for call in calls:
                jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])
            assert len({c["id"] for c in calls}) == len(calls)
    assert max(counts) >= 2  # without parallel_tool_calls=False a turn may call more than once


def test_tool_choice_none_and_no_tools_answer_in_plain_text(engine):
    for kw in ({"tool_choice": "none"}, {}):
        req = GenerationRequest("n", messages=MESSAGES, max_tokens=12, temperature=0, **kw,
                                tools=TOOLS if kw else None)
        chunks = run_all(engine, [req])[0]
        assert chunks[-1].finish_reason == "length" and chunks[-1].constrained is None
        assert not any(c.tool_calls for c in chunks)


class Script:
    """A logits processor that makes the model say `text` (then stop): stands in for a trained
    model deciding, in auto mode, to call a tool after some words."""

    def __init__(self, ids: list[int], eos: int):
        self.ids, self.eos, self.at = ids, eos, 0

    def apply(self, logits):
        token = self.ids[self.at] if self.at < len(self.ids) else self.eos
        logits.fill_(-1e4)[token] = 0.0  # not -inf: a token the grammar masks then still shows up as -inf

    def accept(self, token):
        self.at += 1


def scripted(monkeypatch, engine, text: str):
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    eos = engine.tokenizer.eos_token_id
    real = engine_module.row_logits

    def with_script(req, gen, vocab_size, vocab, grammar=None):
        row = real(req, gen, vocab_size, vocab, grammar)
        row.processors.insert(0, Script(ids, eos))  # before the grammar: the mask has the last word
        return row
    monkeypatch.setattr(engine_module, "row_logits", with_script)


def test_auto_parses_a_call_out_of_the_text_and_never_shows_it(monkeypatch, engine):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    scripted(monkeypatch, engine, "Let me check. " + call)
    chunks = run_all(engine, [tool_request(0, tool_choice="auto", max_tokens=80)])[0]
    text, calls = assemble(chunks)
    assert text == "Let me check. "
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Paris", "unit": "celsius"})]
    assert chunks[-1].finish_reason == "tool_calls"
    assert not any("<" in c.text for c in chunks)


def test_auto_text_that_only_looks_like_a_marker_is_shown(monkeypatch, engine):
    scripted(monkeypatch, engine, "a <tool> and <tool_cal")
    chunks = run_all(engine, [tool_request(0, tool_choice="auto", max_tokens=80)])[0]
    assert assemble(chunks) == ("a <tool> and <tool_cal", [])
    assert chunks[-1].finish_reason == "stop"


def test_auto_grammar_refuses_a_call_to_an_unknown_tool(monkeypatch, engine):
    scripted(monkeypatch, engine, '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>')
    chunks = run_all(engine, [tool_request(0, tool_choice="auto", max_tokens=40)])[0]
    _, calls = assemble(chunks)
    assert all(c["name"] in PARAMETERS for c in calls)  # the mask overruled the script


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 1000])
def test_stream_parser_splits_text_and_calls_at_any_chunking(step):
    text = ('Sure <tool_call>\n{"name": "add", "arguments": {"a": {"b": 1}}}\n</tool_call>\n'
            '<tool_call>\n{"name": "w", "arguments": {}}\n</tool_call>\n<tool')
    parser, content, deltas = ToolCallStream(), "", []
    for i in range(0, len(text), step):
        shown, calls = parser.feed(text[i:i + step])
        content, deltas = content + shown, deltas + calls
    shown, calls = parser.close()
    content, deltas = content + shown, deltas + calls
    assert content == "Sure \n<tool"  # text after the calls is content (the separator with it)
    args: dict[int, str] = {}
    for d in deltas:
        args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
    assert [d["function"]["name"] for d in deltas if "id" in d] == ["add", "w"]
    assert args == {0: '{"a": {"b": 1}}', 1: "{}"}


def test_default_format_renders_tools_calls_and_results_for_a_plain_template():
    history = [{"role": "system", "content": "Be brief."}, *MESSAGES,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
    out = default_messages(history, TOOLS)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in out[0]["content"] and "<tools>" in out[0]["content"]
    assert out[2] == {"role": "assistant", "content":
                      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\n18C\n</tool_response>"}
    assert default_messages(MESSAGES, None) == MESSAGES
