"""The fake upstream's answers to agent requests (tools, response_format, n, logprobs), in
OpenAI's shapes, streamed or not. Deterministic, so tests can compare against exact answers:

- `tools` with a tool_choice other than "none", and the last message not a tool result: a call
  of the named tool (or the first; the first two with `parallel_tool_calls: true`), its arguments
  an example value of the tool's `parameters` schema, streamed in a few argument fragments;
- the last message a tool result: the text "The tool said: <its content>";
- `response_format` json_schema: an example value of the schema, as JSON text; json_object: an
  object; `n` choices (choice i's text ends with its index when n > 1); `logprobs` per piece.
"""

from __future__ import annotations

import json


def wants_agent_answer(req: dict) -> bool:
    return any(req.get(k) for k in ("tools", "response_format", "logprobs")) or (req.get("n") or 1) > 1 or \
        any(m.get("role") == "tool" for m in req.get("messages") or [])


def example(schema: dict | bool | None):
    """A value valid under the simple schemas tests use (object, array, enum, const, scalars
    with minimum/maxLength); `anyOf`/`oneOf` take their first branch."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example(sub) for name, sub in props.items()}
    if kind == "array":
        return [example(schema.get("items") or {"type": "string"})] * max(1, schema.get("minItems", 1))
    if kind == "string":
        return "Paris"[: schema.get("maxLength", 5)]
    if kind == "integer":
        return int(schema.get("minimum", 3))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


def _calls(req: dict) -> list[tuple[str, str]]:
    """(name, arguments JSON) of the calls to make, or [] to answer in text."""
    tools = [t["function"] for t in req.get("tools") or [] if t.get("type") == "function"]
    choice = req.get("tool_choice")
    messages = req.get("messages") or []
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return []
    if isinstance(choice, dict):
        tools = [t for t in tools if t["name"] == choice["function"]["name"]]
    chosen = tools[:2] if req.get("parallel_tool_calls") is True else tools[:1]
    return [(t["name"], json.dumps(example(t.get("parameters") or {"type": "object"}))) for t in chosen]


def _text(req: dict) -> str:
    messages = req.get("messages") or []
    if messages and messages[-1].get("role") == "tool":
        return f"The tool said: {messages[-1].get('content')}"
    fmt = req.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return json.dumps(example(fmt["json_schema"]["schema"]))
    if fmt.get("type") == "json_object":
        return json.dumps({"answer": "Hello"})
    return "Hello from the fake upstream."


def _pieces(text: str) -> list[str]:
    """The text in about four pieces (the 'tokens' that are streamed and counted)."""
    step = max(1, -(-len(text) // 4))
    return [text[i:i + step] for i in range(0, len(text), step)]


def _logprobs(piece: str, req: dict, chat: bool) -> dict:
    top = req.get("top_logprobs") if chat else req.get("logprobs")
    alternatives = [(piece, -0.25), *((f"alt{k}", -1.5 - k) for k in range(1, int(top or 0)))]
    if not chat:
        return {"tokens": [piece], "token_logprobs": [-0.25], "top_logprobs": [dict(alternatives[: int(top or 0)])],
                "text_offset": [0]}
    entry = {"token": piece, "logprob": -0.25, "bytes": list(piece.encode()),
             "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                              for t, lp in alternatives[: int(top or 0)]]}
    return {"content": [entry], "refusal": None}


def choices(req: dict, chat: bool) -> list[dict]:
    """Per choice: its streamed events (choice objects without index) and its whole answer."""
    out = []
    n = int(req.get("n") or 1)
    calls = _calls(req) if chat else []
    want_logprobs = req.get("logprobs") not in (None, False)
    for i in range(n):
        events, tokens = [], 0
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": []}
            for k, (name, args) in enumerate(calls):
                call_id = f"call_{i}_{k}_{name}"
                message["tool_calls"].append({"id": call_id, "type": "function",
                                              "function": {"name": name, "arguments": args}})
                events.append({"tool_calls": [{"index": k, "id": call_id, "type": "function",
                                               "function": {"name": name, "arguments": ""}}]})
                for piece in _pieces(args):
                    events.append({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
                    tokens += 1
            finish, whole = "tool_calls", message
        else:
            text = _text(req) + (f" {i}" if n > 1 and not req.get("response_format") else "")
            pieces = _pieces(text)
            tokens = len(pieces)
            for piece in pieces:
                events.append({"content": piece, "logprobs": _logprobs(piece, req, chat) if want_logprobs else None})
            finish = "stop"
            whole = {"role": "assistant", "content": text} if chat else text
        whole_logprobs = None
        if want_logprobs and not calls:
            parts = [e["logprobs"] for e in events]
            whole_logprobs = ({"content": [c for p in parts for c in p["content"]], "refusal": None} if chat else
                              {k: [x for p in parts for x in p[k]] for k in parts[0]})
        out.append({"events": events, "whole": whole, "finish": finish, "tokens": tokens,
                    "logprobs": whole_logprobs})
    return out


def answer(req: dict, chat: bool, base: dict) -> tuple[dict, list[dict]]:
    """(the non-streamed answer, the streamed events) for an agent request; `base` is the
    envelope (id, object, created, model) without `object`."""
    made = choices(req, chat)
    usage = {"prompt_tokens": 12, "completion_tokens": sum(c["tokens"] for c in made)}
    usage["total_tokens"] = 12 + usage["completion_tokens"]
    full = {**base, "object": "chat.completion" if chat else "text_completion", "usage": usage, "choices": [
        {"index": i, "finish_reason": c["finish"], "logprobs": c["logprobs"],
         **({"message": c["whole"]} if chat else {"text": c["whole"]})} for i, c in enumerate(made)]}
    obj = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    events = []
    for i, c in enumerate(made):  # choices interleaved piece by piece, as a batching server sends them
        if chat:
            events.append({**obj, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})
    longest = max(len(c["events"]) for c in made)
    for step in range(longest):
        for i, c in enumerate(made):
            if step < len(c["events"]):
                e = c["events"][step]
                logprobs = e.get("logprobs")
                if chat:
                    delta = {k: v for k, v in e.items() if k != "logprobs"}
                    choice = {"index": i, "delta": delta, "finish_reason": None, "logprobs": logprobs}
                else:
                    choice = {"index": i, "text": e["content"], "finish_reason": None, "logprobs": logprobs}
                events.append({**obj, "choices": [choice]})
    for i, c in enumerate(made):
        last = {"delta": {}} if chat else {"text": ""}
        events.append({**obj, "choices": [{"index": i, **last, "finish_reason": c["finish"]}]})
    if (req.get("stream_options") or {}).get("include_usage"):
        events.append({**obj, "choices": [], "usage": usage})
    return full, events
