"""OpenAI JSON <-> the pool's GenerationRequest/GenerationChunk, in one module.

Requests are parsed strictly: unknown fields and values muxgate cannot honour are 400s naming
the field (as OpenAI does), never silently ignored.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.errors import BadRequest
from workers.types import GenerationChunk, GenerationRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logprobs: Literal[False, None] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    store: bool | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    echo: Literal[False] = False
    best_of: Literal[1, None] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request is supported")
            return v[0]
        return v


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# json.loads with a keyword builds a new decoder per call; one decoder serves every request.
_strict_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def parse_json(raw: bytes) -> dict:
    """Strict JSON: UTF-8 only, no NaN/Infinity, an object at the top."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"Request body is not valid UTF-8 (byte {exc.start}).", code="invalid_json") from None
    try:
        body = _strict_decode(text)
    except RecursionError:
        raise BadRequest("The JSON body is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    if "\\ud" in text.lower():  # an escaped lone surrogate decodes to a str no tokenizer can encode
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("The request contains an unpaired UTF-16 surrogate escape.", code="invalid_json") from None
    return body


def parse_request(model_cls: type[_Strict], body: dict) -> _Strict:
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith(("str", "list"))))
        if err["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {loc}"
        elif err["type"] == "missing":
            message = f"Missing required parameter: '{loc}'."
        else:
            message = f"Invalid value for '{loc}': {err['msg']}."
        raise BadRequest(message, param=loc or None, code="invalid_request") from None


def to_generation(req: ChatCompletionRequest | CompletionRequest, request_id: str, default_max_tokens: int,
                  session_id: str | None = None) -> GenerationRequest:
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default_max_tokens
    common = dict(request_id=request_id, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                  stop=req.stop_list(), seed=req.seed, session_id=session_id)
    if isinstance(req, ChatCompletionRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        return GenerationRequest(messages=messages, **common)
    return GenerationRequest(prompt=req.prompt, **common)


def usage(chunk: GenerationChunk) -> dict:
    return {
        "prompt_tokens": chunk.prompt_tokens,
        "completion_tokens": chunk.completion_tokens,
        "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
    }


class ResponseBuilder:
    """Builds the response objects of one request, chat or text completion."""

    def __init__(self, chat: bool, response_id: str, model: str):
        self.chat = chat
        self.id = response_id
        self.model = model
        self.created = int(time.time())

    def _envelope(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, last: GenerationChunk) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "finish_reason": last.finish_reason, "logprobs": None}
            out = self._envelope("chat.completion")
        else:
            choice = {"index": 0, "text": text, "finish_reason": last.finish_reason, "logprobs": None}
            out = self._envelope("text_completion")
        out["choices"] = [choice]
        out["usage"] = usage(last)
        return out

    def chunk(self, text: str, finish_reason: str | None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            if finish_reason is not None and not text:
                delta = {}
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            out = self._envelope("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
            out = self._envelope("text_completion")
        out["choices"] = [choice]
        return out

    def usage_chunk(self, last: GenerationChunk) -> dict:
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = usage(last)
        return out


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"data: {payload}\n\n".encode()
