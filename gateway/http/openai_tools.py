"""The agent part of the chat API's request schema: function tools, tool_choice, tool calls in
the history and response_format (OpenAI's shapes), with the checks OpenAI makes at parse time.

Every JSON Schema a client sends (a tool's `parameters`, a `json_schema` response format) is
bounded in size and depth before anything looks inside it, then checked against its draft's
metaschema with the `jsonschema` library, so a bad schema is a 400 naming its field and never
reaches an engine that would compile it into a grammar.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Literal

from jsonschema import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for
from pydantic import ConfigDict, Field, field_validator, model_validator

from gateway.http.errors import BadRequest
from policies.schema import Strict

# Limits, documented in the README: the engine compiles each schema into a grammar, and an
# unbounded one is a way to make a worker spin. OpenAI's own limit on tools is 128.
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024  # one schema, as compact JSON
MAX_SCHEMA_DEPTH = 32  # nested objects/arrays inside one schema
MAX_TOOLS_BYTES = 256 * 1024  # all of a request's tool definitions together
MAX_TOOL_CALLS_PER_MESSAGE = 128
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
# agents send the same tools on every step: a schema that passed once is not checked again
_checked: OrderedDict[str, None] = OrderedDict()
_CHECKED_MAX = 512
_checked_lock = threading.Lock()  # large bodies are parsed in worker threads


def _walk(value) -> tuple[int, list[str]]:
    """Nesting depth of a JSON value and its `$ref` strings, without recursion (a hostile
    schema is not a stack test); stops counting past the depth limit."""
    deepest, refs, stack = 0, [], [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_SCHEMA_DEPTH:
            return deepest, refs
        stack.extend((child, level + 1) for child in children)
    return deepest, refs


def _resolves(schema: dict, ref: str) -> bool:
    """Whether a local `$ref` ('#' or a JSON pointer '#/...') points inside the schema."""
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = schema
    for step in ref[2:].split("/"):
        step = step.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return False
    return True


def check_json_schema(schema: dict) -> dict:
    """A JSON Schema within the size bounds and valid under its draft's metaschema (2020-12
    when it names none), or a ValueError saying what is wrong."""
    depth, refs = _walk(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")
    text = _encode(schema)
    if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise ValueError(f"the schema is larger than {MAX_SCHEMA_BYTES} bytes")
    with _checked_lock:
        if text in _checked:
            _checked.move_to_end(text)
            return schema
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path if exc.json_path != "$" else "the schema"
        raise ValueError(f"not a valid JSON Schema ({where}: {exc.message})") from None
    for ref in refs:  # nothing is fetched: a reference must point inside the schema itself
        if not _resolves(schema, ref):
            raise ValueError(f"$ref {ref[:80]!r} does not point inside the schema (only local references "
                             "'#/...' are supported)")
    with _checked_lock:
        _checked[text] = None
        while len(_checked) > _CHECKED_MAX:
            _checked.popitem(last=False)
    return schema


def bound_tools(value):
    """The raw `tools` value, refused before any of it is validated when the definitions
    together are larger than MAX_TOOLS_BYTES (each schema's own bound comes later)."""
    if isinstance(value, list) and len(value) <= MAX_TOOLS:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > MAX_TOOLS_BYTES:
            raise ValueError(f"the tool definitions together are larger than {MAX_TOOLS_BYTES} bytes")
    return value


class FunctionDef(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="The function's name: a-z, A-Z, 0-9, _ and -, at most 64.")
    description: str | None = Field(None, max_length=16_384)
    parameters: dict | None = Field(None, description="A JSON Schema object for the arguments.")
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v):
        return v if v is None else check_json_schema(v)


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str = Field(max_length=MAX_SCHEMA_BYTES * 4, description="The arguments, JSON text as the model wrote it.")


class ToolCall(Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: CalledFunction


class JsonSchemaFormat(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(None, max_length=16_384)
    schema_: dict = Field(alias="schema", description="The JSON Schema the answer must validate against.")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)  # and Strict's

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v):
        return check_json_schema(v)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` is required with type json_schema and allowed only with it")
        return self

    def to_dict(self) -> dict | None:
        """OpenAI's shape for GenerationRequest; None for plain text (nothing to enforce)."""
        if self.type == "text":
            return None
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def check_tool_fields(tools: list[Tool] | None, tool_choice, messages) -> None:
    """Checks across fields, made after the schema parse: names unique, a named tool_choice
    exists, every tool message answers an earlier assistant call. A 400 naming the field."""
    if tools is not None:
        if len(tools) > MAX_TOOLS:
            raise BadRequest(f"Invalid value for 'tools': at most {MAX_TOOLS} tools per request.", param="tools")
        seen: set[str] = set()
        for i, tool in enumerate(tools):
            if tool.function.name in seen:
                raise BadRequest(f"Invalid value for 'tools.{i}.function.name': the name "
                                 f"'{tool.function.name}' is used by an earlier tool.", param=f"tools.{i}.function.name")
            seen.add(tool.function.name)
    if tool_choice is not None:
        if not tools:
            raise BadRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                             "specified.", param="tool_choice")
        if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in seen:
            raise BadRequest(f"Invalid value for 'tool_choice': no tool named '{tool_choice.function.name}' "
                             "in 'tools'.", param="tool_choice")
    _check_history(messages)


def _check_history(messages) -> None:
    calls: set[str] = set()
    for i, m in enumerate(messages):
        if m.tool_calls is not None and m.role != "assistant":
            raise BadRequest(f"Invalid value for 'messages.{i}.tool_calls': only assistant messages make tool "
                             "calls.", param=f"messages.{i}.tool_calls")
        if (m.tool_call_id is not None) != (m.role == "tool"):
            what = "is required for" if m.role == "tool" else "is only allowed on"
            raise BadRequest(f"Invalid value for 'messages.{i}.tool_call_id': 'tool_call_id' {what} tool messages.",
                             param=f"messages.{i}.tool_call_id")
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise BadRequest(f"Invalid value for 'messages.{i}.content': content may be null only on an assistant "
                             "message with tool_calls.", param=f"messages.{i}.content")
        if m.tool_calls:
            if len(m.tool_calls) > MAX_TOOL_CALLS_PER_MESSAGE:
                raise BadRequest(f"Invalid value for 'messages.{i}.tool_calls': at most "
                                 f"{MAX_TOOL_CALLS_PER_MESSAGE} calls.", param=f"messages.{i}.tool_calls")
            calls.update(call.id for call in m.tool_calls)
        if m.role == "tool" and m.tool_call_id not in calls:
            raise BadRequest(f"Invalid value for 'messages.{i}.tool_call_id': no earlier assistant message made a "
                             f"tool call with id '{m.tool_call_id}'.", param=f"messages.{i}.tool_call_id")
