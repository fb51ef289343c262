"""One view of a chat answer for comparing a stream with a whole answer: per choice, its content,
tool calls (id, name, arguments), logprob entries and finish reason, as the official client's
objects give them."""


def reassemble(chunks) -> dict[int, dict]:
    """Per choice: the message the deltas add up to (what a client library does with a stream)."""
    out: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            msg = out.setdefault(choice.index, {"content": None, "tool_calls": {}, "finish_reason": None,
                                                "logprobs": []})
            delta = choice.delta
            if delta.content:
                msg["content"] = (msg["content"] or "") + delta.content
            for call in delta.tool_calls or []:
                slot = msg["tool_calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                slot["name"] += (call.function.name or "") if call.function else ""
                slot["arguments"] += (call.function.arguments or "") if call.function else ""
            if choice.logprobs and choice.logprobs.content:
                msg["logprobs"].extend(e.model_dump() for e in choice.logprobs.content)
            msg["finish_reason"] = choice.finish_reason or msg["finish_reason"]
    return out


def whole(choice) -> dict:
    """The same view of a non-streamed choice."""
    msg = choice.message
    return {"content": msg.content, "finish_reason": choice.finish_reason,
            "tool_calls": {i: {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                           for i, c in enumerate(msg.tool_calls or [])},
            "logprobs": [e.model_dump() for e in (choice.logprobs.content if choice.logprobs else None) or []]}
