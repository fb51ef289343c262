"""GenerationChunks -> OpenAI's response objects: a whole chat or text completion, or its SSE
chunks, for any number of choices, with tool calls and logprobs in OpenAI's shapes.

The streamed chunks are the backend's chunks re-shaped one for one; the whole answer is the same
chunks assembled (text joined, each tool call's argument fragments joined under its id), so a
streamed answer reassembles to exactly the non-streamed one.
"""

from __future__ import annotations

import json
import time

from workers.types import GenerationChunk


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Choice:
    """One choice as it arrives: text, tool calls (by their stream index), logprobs, finish."""

    __slots__ = ("text", "calls", "logprobs", "finish_reason", "offset")

    def __init__(self):
        self.text: list[str] = []
        self.calls: dict[int, dict] = {}
        self.logprobs: list[dict] = []
        self.finish_reason: str | None = None
        self.offset = 0  # characters so far: the legacy logprobs' text_offset

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.text:
            self.text.append(chunk.text)
        for delta in chunk.tool_calls or ():
            call = self.calls.get(delta.get("index", 0))
            fn = delta.get("function") or {}
            if call is None:
                call = self.calls[delta.get("index", 0)] = {
                    "id": delta.get("id"), "type": delta.get("type", "function"),
                    "function": {"name": fn.get("name") or "", "arguments": ""}}
            elif fn.get("name"):
                call["function"]["name"] += fn["name"]
            call["function"]["arguments"] += fn.get("arguments") or ""
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)

    def tool_calls(self) -> list[dict] | None:
        return [self.calls[i] for i in sorted(self.calls)] or None


def legacy_logprobs(entries: list[dict], offset: int) -> dict:
    """/v1/completions' logprobs shape (parallel lists) from OpenAI's per-token entries."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.get("token", ""))
    return {"tokens": [e.get("token", "") for e in entries],
            "token_logprobs": [e.get("logprob") for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or ()} for e in entries],
            "text_offset": offsets}


class ResponseBuilder:
    """Builds the response objects of one request, chat or text completion. `n` is the number
    of choices asked for; the answer is complete once that many have finished."""

    def __init__(self, chat: bool, response_id: str, model: str, n: int = 1, logprobs: bool = False):
        self.chat = chat
        self.id = response_id
        self.model = model
        self.n = n
        self.logprobs = logprobs
        self.created = int(time.time())
        self.choices: dict[int, _Choice] = {}
        self.finished = 0

    def _envelope(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    @property
    def done(self) -> bool:
        return self.finished >= self.n

    def _choice(self, index: int) -> _Choice:
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = _Choice()
        return choice

    def add(self, chunk: GenerationChunk, collect: bool = True) -> None:
        """Account one chunk: always its finish, and with `collect` its content (a whole answer)."""
        choice = self._choice(chunk.index)
        if collect:
            choice.add(chunk)
        if chunk.finish_reason is not None and choice.finish_reason is None:
            choice.finish_reason = chunk.finish_reason
            self.finished += 1

    def text(self, index: int = 0) -> str:
        """One choice's text so far (collected chunks only)."""
        choice = self.choices.get(index)
        return "" if choice is None else "".join(choice.text)

    def _logprobs(self, entries: list[dict] | None, offset: int) -> dict | None:
        if not self.logprobs:
            return None
        if self.chat:
            return {"content": list(entries or []), "refusal": None}
        return legacy_logprobs(entries or [], offset)

    def full(self, prompt_tokens: int, completion_tokens: int) -> dict:
        out = self._envelope("chat.completion" if self.chat else "text_completion")
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            text, calls = "".join(c.text), c.tool_calls()
            body = {"index": index, "finish_reason": c.finish_reason, "logprobs": self._logprobs(c.logprobs, 0)}
            if self.chat:
                message = {"role": "assistant", "content": None if calls and not text else text, "refusal": None}
                if calls:
                    message["tool_calls"] = calls
                body["message"] = message
            else:
                body["text"] = text
            choices.append(body)
        out["choices"] = choices
        out["usage"] = usage(prompt_tokens, completion_tokens)
        return out

    def opening(self) -> list[dict]:
        """The first event of each choice (chat: its role)."""
        return [self._event(i, {"role": "assistant", "content": ""} if self.chat else "", None, None)
                for i in range(self.n)]

    def delta(self, chunk: GenerationChunk) -> dict | None:
        """The event carrying this chunk's content, None when it has none."""
        if not (chunk.text or chunk.tool_calls or chunk.logprobs):
            return None
        choice = self._choice(chunk.index)
        logprobs = self._logprobs(chunk.logprobs, choice.offset) if chunk.logprobs else None
        choice.offset += len(chunk.text)
        if not self.chat:
            return self._event(chunk.index, chunk.text, None, logprobs)
        delta: dict = {"content": chunk.text} if chunk.text or not chunk.tool_calls else {}
        if chunk.tool_calls:
            delta["tool_calls"] = chunk.tool_calls
        return self._event(chunk.index, delta, None, logprobs)

    def finish(self, chunk: GenerationChunk) -> dict:
        return self._event(chunk.index, {} if self.chat else "", chunk.finish_reason, None)

    def _event(self, index: int, content, finish_reason: str | None, logprobs: dict | None) -> dict:
        if self.chat:
            choice = {"index": index, "delta": content, "finish_reason": finish_reason, "logprobs": logprobs}
            out = self._envelope("chat.completion.chunk")
        else:
            choice = {"index": index, "text": content, "finish_reason": finish_reason, "logprobs": logprobs}
            out = self._envelope("text_completion")
        out["choices"] = [choice]
        return out

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = usage(prompt_tokens, completion_tokens)
        return out


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"data: {payload}\n\n".encode()
