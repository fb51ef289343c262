"""A fake OpenAI-compatible upstream that answers instantly (streaming or not), for measuring
what a gateway adds. A bare ASGI app, so its own cost stays small and constant. Requests with
tools, response_format, n > 1 or logprobs get the agent answers of loadtests/fake_agent_upstream.py
(tool calls, JSON); the last requests' bodies are kept in RECEIVED for tests to look at.
Run: python -m loadtests.fake_upstream --port 9100
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque

from loadtests import fake_agent_upstream

RECEIVED: deque[dict] = deque(maxlen=32)  # request bodies, newest last

WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


def _usage(n: int) -> dict:
    return {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}


async def lifespan(receive, send, startup=None, shutdown=None) -> None:
    """Answer ASGI lifespan events, running ``startup()`` / ``shutdown()`` (if given) at each."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            if startup is not None:
                startup()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            if shutdown is not None:
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    body = await read_body(receive)
    path = scope["path"]
    if scope["method"] == "GET" and path.endswith("/models"):
        return await _json(send, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                             "owned_by": "fake"}]})
    if scope["method"] == "GET":
        return await _json(send, {"status": "ok"})
    req = json.loads(body or b"{}")
    RECEIVED.append(req)
    chat = path.endswith("/chat/completions")
    model, created, rid = req.get("model", "fake"), int(time.time()), "cmpl-fake"
    if fake_agent_upstream.wants_agent_answer(req):
        full, events = fake_agent_upstream.answer(req, chat, {"id": rid, "created": created, "model": model})
        if not req.get("stream"):
            return await _json(send, full)
        return await _sse(send, events)
    n = min(len(WORDS), int(req.get("max_tokens") or len(WORDS)))
    if not req.get("stream"):
        text = "".join(WORDS[:n])
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        return await _json(send, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                                  "created": created, "model": model, "choices": [choice], "usage": _usage(n)})
    obj = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for i, word in enumerate(WORDS[:n]):
        choice = ({"index": 0, "delta": {"content": word} if i else {"role": "assistant", "content": word},
                   "finish_reason": None} if chat else {"index": 0, "text": word, "finish_reason": None})
        events.append({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]})
    last = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {"index": 0, "text": "", "finish_reason": "stop"}
    events.append({"id": rid, "object": obj, "created": created, "model": model, "choices": [last]})
    if (req.get("stream_options") or {}).get("include_usage"):
        events.append({"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": _usage(n)})
    await _sse(send, events)


async def _sse(send, events: list[dict]) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": payload})


async def _json(send, obj: dict) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
