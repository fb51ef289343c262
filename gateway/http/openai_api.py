"""OpenAI request JSON -> the pool's GenerationRequest (answers go back in
gateway/http/openai_responses.py; the agent fields' schema is gateway/http/openai_tools.py).

Requests are parsed strictly: unknown fields and values muxgate cannot honour are 400s naming
the field (as OpenAI does), never silently ignored.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from gateway.http.errors import BadRequest
from gateway.http.openai_tools import (
    MAX_TOOLS,
    ResponseFormat,
    Strict,
    Tool,
    ToolCall,
    ToolChoice,
    bound_tools,
    check_tool_fields,
)
from workers.types import GenerationRequest

MAX_CHOICES = 8  # `n`: choices decode together in one batch; more is a fan-out, not a request
MAX_LOGIT_BIAS = 300
MAX_LEGACY_LOGPROBS = 5  # /v1/completions' `logprobs` (top alternatives per token), as OpenAI's
MAX_STOPS = 4  # as OpenAI's
# Each stop string is matched against every sampled token's text and held back while it could
# still become one; a bound keeps that work and the held-back text small.
MAX_STOP_CHARS = 1024
# `max_tokens` / `max_completion_tokens`: above every served context (capped again by the model's
# context when known); it keeps admission's worst case a number every store can hold.
MAX_TOKENS = 1_048_576
# Messages per chat request: each costs the replica's chat template a render step, however short.
MAX_MESSAGES = 4096


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages: the calls the model made
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)  # tool messages: the call answered
    refusal: str | None = None  # clients echo an earlier answer's refusal back; not used

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def to_dict(self) -> dict:
        """OpenAI's message shape with the content flattened to text (null stays null)."""
        out = {"role": "system" if self.role == "developer" else self.role,
               "content": None if self.content is None else self.text()}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump(mode="json") for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(Strict):
    include_usage: bool = False


class _Sampling(Strict):
    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=MAX_CHOICES, description=f"Choices to return, at most {MAX_CHOICES}.")
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(
        None, description=f"Token id (a decimal string) -> bias in [-100, 100], at most {MAX_LOGIT_BIAS} entries.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_CHARS} characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for key, bias in v.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) < 2**31):
                raise ValueError(f"keys must be token ids (decimal strings), not {key[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {key} must be between -100 and 100")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def common(self) -> dict:
        """The GenerationRequest fields both endpoints share (None: OpenAI's default)."""
        return dict(temperature=self.temperature, top_p=self.top_p, stop=self.stop_list(), seed=self.seed,
                    n=self.n or 1, presence_penalty=self.presence_penalty or 0.0,
                    frequency_penalty=self.frequency_penalty or 0.0,
                    logit_bias={int(k): float(b) for k, b in self.logit_bias.items()} if self.logit_bias else None,
                    passthrough={"user": self.user} if self.user is not None else {})


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    store: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token, with `logprobs`.")
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)

    @field_validator("tools", mode="before")
    @classmethod
    def _tools_size(cls, v):
        return bound_tools(v)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def check(self) -> None:
        """Checks across fields (after the schema parse): a 400 naming the field."""
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
                             param="top_logprobs")
        check_tool_fields(self.tools, self.tool_choice, self.messages)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS)
    echo: Literal[False] = False
    best_of: Literal[1, None] = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LEGACY_LOGPROBS,
                                 description="Return the sampled tokens' logprobs and this many alternatives.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request is supported")
            return v[0]
        return v

    def check(self) -> None:
        pass


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


# Bodies larger than this are parsed off the event loop: the metaschema check of a tool list's
# schemas costs ~2 ms per KiB the first time (jsonschema's 2020-12 metaschema), and a request
# carrying hundreds of KiB of new schemas must not stall every other request on this gateway.
OFF_LOOP_PARSE_BYTES = 16 * 1024


async def parse_body(raw: bytes, model_cls: type[Strict]) -> Strict:
    """`raw` parsed strictly as `model_cls`: in this thread when small, else in a worker thread."""
    if len(raw) <= OFF_LOOP_PARSE_BYTES:
        return parse_request(model_cls, parse_json(raw))
    return await asyncio.to_thread(lambda: parse_request(model_cls, parse_json(raw)))


def parse_request(model_cls: type[Strict], body: dict) -> Strict:
    try:
        parsed = model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not _union_tag(p))
        if err["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {loc}"
        elif err["type"] == "missing":
            message = f"Missing required parameter: '{loc}'."
        else:
            message = f"Invalid value for '{loc}': {err['msg'].removeprefix('Value error, ')}."
        raise BadRequest(message, param=loc or None, code="invalid_request") from None
    parsed.check()
    return parsed


def _union_tag(part) -> bool:
    """A location step pydantic adds for a union's member ('str', "list[str]", "literal['auto']",
    a model's class name), not a field (`stream`, `stop`): OpenAI's field names are lower case."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or part[:1].isupper()
                                      or part.startswith(("list[", "literal[", "dict[")))


def to_generation(req: ChatCompletionRequest | CompletionRequest, request_id: str, default_max_tokens: int,
                  session_id: str | None = None) -> GenerationRequest:
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default_max_tokens
    common = dict(request_id=request_id, max_tokens=max_tokens, session_id=session_id, **req.common())
    if isinstance(req, ChatCompletionRequest):
        return GenerationRequest(
            messages=[m.to_dict() for m in req.messages], **common,
            tools=[t.model_dump(mode="json", exclude_none=True) for t in req.tools] if req.tools else None,
            tool_choice=(req.tool_choice if isinstance(req.tool_choice, str) or req.tool_choice is None
                         else req.tool_choice.model_dump(mode="json")),
            parallel_tool_calls=req.parallel_tool_calls,
            response_format=req.response_format.to_dict() if req.response_format else None,
            logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0)
    # the legacy endpoint's `logprobs` is a count: 0 still returns the sampled tokens' logprobs
    return GenerationRequest(prompt=req.prompt, **common, logprobs=req.logprobs is not None,
                             top_logprobs=req.logprobs or 0)

