"""How tools reach a local model and how its calls look: the prompt rendering and the call grammar.

The call format is Hermes / Qwen's, which many open chat models are trained on:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call (several, separated by a newline, when `parallel_tool_calls` allows).

Prompt: when the tokenizer's chat template renders tools itself (it mentions `tools`), it gets the
OpenAI tool list through `apply_chat_template(..., tools=...)` and the messages unchanged.
Otherwise (the zoo's simple template, many base models) muxgate's default rendering applies: the
tool list and the format above go into the system message, an assistant message's `tool_calls`
become its `<tool_call>` blocks, and a `tool` message becomes a user turn wrapped in
`<tool_response>` (as Qwen's template does). With tool_choice "none" the tools are not shown.

Grammar (xgrammar structural tags; workers/grammar.py compiles them): each tool is one tag whose
begin fixes the name and whose content is that tool's `parameters` schema, so a call's name is
one of the tools and its arguments validate.
- "required": only calls (at least one; exactly one when parallel_tool_calls is false);
- a named tool: exactly one call of it, nothing else;
- "auto": free text until the `<tool_call>` trigger, then a complete call; text may follow.
"""

from __future__ import annotations

import json

from workers.types import GenerationRequest

TRIGGER = "<tool_call>"
CALL_OPEN = '<tool_call>\n{"name": "'
NAME_END = '", "arguments": '
CALL_CLOSE = "}\n</tool_call>"
CALL_SEPARATOR = "\n"

SYSTEM_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def tool_mode(req: GenerationRequest) -> str | None:
    """"auto", "required", "named", or None when the model may not call tools."""
    if not req.tools or req.tool_choice == "none":
        return None
    if isinstance(req.tool_choice, dict):
        return "named"
    return "required" if req.tool_choice == "required" else "auto"


def tool_call_ebnf(tools: list[dict], mode: str, parallel: bool) -> str:
    """The grammar (EBNF) of a turn that calls `tools` ({"name", "parameters"}) in `mode`."""
    import xgrammar as xgr
    from xgrammar.structural_tag import (GrammarFormat, StructuralTag, TagFormat, TagsWithSeparatorFormat,
                                         TriggeredTagsFormat)

    from workers.grammar import json_ebnf

    tags = [TagFormat(begin=CALL_OPEN + t["name"] + NAME_END, content=GrammarFormat(grammar=json_ebnf(t["parameters"])),
                      end=CALL_CLOSE) for t in tools]
    if mode == "auto":
        fmt = TriggeredTagsFormat(triggers=[TRIGGER], tags=tags, stop_after_first=not parallel)
    else:
        fmt = TagsWithSeparatorFormat(tags=tags, separator=CALL_SEPARATOR, at_least_one=True, stop_after_first=not parallel)
    return str(xgr.Grammar.from_structural_tag(StructuralTag(format=fmt)))


# ---- the prompt ---------------------------------------------------------------------------------


def render_chat(tokenizer, req: GenerationRequest) -> str:
    """The prompt text for a chat request, tools included as the module docstring describes."""
    template = tokenizer.chat_template or ""
    tools = req.tools if tool_mode(req) is not None else None
    if "tools" in template:
        return tokenizer.apply_chat_template(req.messages, tools=tools, add_generation_prompt=True, tokenize=False)
    messages = default_messages(req.messages, tools)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def default_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages in the default tool format, for templates that only know role and content."""
    out = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call["function"]) for call in message["tool_calls"]]
            message = {"role": role, "content": "\n".join(([_text(content)] if content else []) + blocks)}
        elif role == "tool":
            message = {"role": "user", "content": f"<tool_response>\n{_text(content)}\n</tool_response>"}
        out.append(message)  # any other message as it was
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        system = SYSTEM_PROMPT.format(tools=listing)
        if out and out[0].get("role") in ("system", "developer"):
            out[0] = {**out[0], "role": "system", "content": _text(out[0].get("content")) + "\n\n" + system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def _call_block(function: dict) -> str:
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments)
    except (TypeError, ValueError):
        pass  # shown as the string it is
    call = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{call}\n</tool_call>"


def _text(content) -> str:
    """A message's content as text (OpenAI allows a list of parts; only text parts have text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))
