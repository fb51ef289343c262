"""The pool's public request/response types and errors.

These are the only workers types the gateway may import (with `workers.serve_app`'s handle
factory). They are plain dataclasses so they pickle cheaply across Ray and import no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationRequest:
    """One generation: either chat `messages` (templated by the model's tokenizer) or a raw `prompt`."""

    request_id: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None  # None: up to the model's context
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    session_id: str | None = None
    # prefix KV is reused only between requests with the same salt: the gateway sets the team's id,
    # so teams never share (or can time the presence of) each other's cached prompts
    cache_salt: str | None = None
    # speculative decoding, set by the route: a pool model sharing this model's tokenizer drafts
    # `draft_tokens` tokens per step (greedy requests only; the answer is the same without it)
    draft_model: str | None = None
    draft_tokens: int = 4
    # --- the agent / structured-output part of the chat API (OpenAI's shapes, already validated
    # by the gateway; the pool's engine enforces them, an upstream passes them through) ---
    # function tools: [{"type": "function", "function": {"name", "description", "parameters", "strict"}}]
    tools: list[dict] | None = None
    # "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}; None: OpenAI's default
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    # {"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
    response_format: dict | None = None
    n: int = 1  # choices, decoded together; chunks carry their `index`
    logprobs: bool = False
    top_logprobs: int = 0  # 0-20, with logprobs
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> bias in [-100, 100]
    # fair share on a replica (workers/fair_queue.py): an opaque team id and its weight, set by the
    # gateway; the pool never learns what a team is. `priority` (per route) multiplies the weight
    # by 2**priority for this request
    team: str | None = None
    weight: float = 1.0
    priority: int = 0
    # wall clock when the gateway handed it to the Ray pool: a replica that became ready after it
    # counts the request's wait as a cold start (PoolReplica's ColdStart); None in-process
    sent_at: float | None = None
    # the rest, for an upstream: OpenAI fields the gateway validated and passes on unchanged
    # (e.g. `user`), never read by the pool
    passthrough: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages or prompt must be given")


@dataclass
class GenerationChunk:
    """A piece of a streamed answer. The last chunk has `finish_reason` set and the exact counts.

    With `n` > 1 each chunk belongs to one choice (`index`); the stream ends when every choice has
    had its finishing chunk. `prompt_tokens` is the prompt's count (the same on every choice);
    `completion_tokens` is cumulative per choice, so a request's total is the sum over choices.
    """

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" | None while streaming
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative so far, for this choice
    index: int = 0  # the choice this chunk belongs to
    # tool-call deltas in OpenAI's streamed shape: the first delta of a call carries index, id,
    # type and function.name (arguments ""), later ones {"index", "function": {"arguments": piece}};
    # a call is never shown as text, and its text is never split across `text` and here
    tool_calls: list[dict] | None = None
    # OpenAI's per-token entries for this chunk's tokens:
    # [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]
    logprobs: list[dict] | None = None
    # the grammar that constrained this choice, when one did ("json_schema", "json_object", "tool_call")
    constrained: str | None = None
    replica: str | None = None
    # accelerator time attributed to this request so far: a step's busy time shared by the
    # sequences in it in proportion to the tokens each consumed (for cost attribution)
    gpu_seconds: float = 0.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    context_length: int
    parameters: int
    weight_bytes: int


class PoolError(Exception):
    """Base of every error the pool reports; `status` is the HTTP status it maps to."""

    status = 503
    code = "pool_error"
    retry_after: float | None = None

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self):  # keep the type and fields across Ray's pickling
        return (_rebuild_error, (type(self), self.message, self.details, self.retry_after))


def _rebuild_error(cls, message, details, retry_after):
    err = cls(message, **details)
    err.retry_after = retry_after
    return err


class ModelNotFound(PoolError):
    status = 404
    code = "model_not_found"


class ContextLengthExceeded(PoolError):
    status = 400
    code = "context_length_exceeded"


class ModelLoadFailed(PoolError):
    status = 503
    code = "model_load_failed"


class PoolOverloaded(PoolError):
    status = 503
    code = "pool_overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class QueueFull(PoolOverloaded):
    """The replica's queue of requests waiting for their first token is full (for this team)."""

    status = 429
    code = "queue_full"


@dataclass(frozen=True)
class ModelSpec:
    """Where a servable model's checkpoint lives and how to load it."""

    name: str
    path: str
    dtype: str | None = None  # None: workers.dtypes.default_dtype (bf16 on GPUs and on CPUs with native bf16)
    quantization: str | None = None  # "int8" / "int8_head": weight-only int8 linear layers (workers.weights.quantize)
