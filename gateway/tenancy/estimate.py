"""Prompt tokens before a tokenizer has seen the prompt: an upper bound for admission, and a
typical count for billing when an upstream reports none.

The gateway has no tokenizer (the pool owns them), yet admission must reserve the worst case
before the model sees the prompt. Every tokenizer muxgate serves maps each token to at least one
byte of its input text: byte-level BPE (GPT-2, Llama 3, Qwen, the demo zoo) and SentencePiece
with byte fallback alike. So a text's UTF-8 byte count bounds its token count. What the count
misses is what the chat template adds: special tokens and role names around each message, a
generation prompt, and for some models a default system prompt (Qwen's is about 20 tokens,
Llama 3.1's date header about 25). Those are covered by fixed overheads chosen well above the
templates in use. An over-estimate only holds budget a little longer: settlement charges the
counts the model reports.
"""

from __future__ import annotations

import json

from workers.types import GenerationRequest

# Per chat message: start/end special tokens, separators and headers around the role name.
MESSAGE_OVERHEAD_TOKENS = 8
# Per request: BOS, the generation prompt, a template's default system prompt.
REQUEST_OVERHEAD_TOKENS = 64
# With tools: the instructions a template puts around the tool list (the engine's default
# rendering, workers/tool_format.py, and Qwen / Hermes templates: about 430 bytes of text), and per
# call or tool result its wrapping (<tool_call>, <tool_response> and their newlines, under 40 bytes).
TOOLS_OVERHEAD_TOKENS = 512
TOOL_MESSAGE_OVERHEAD_TOKENS = 48


def _utf8_len(text: str | None) -> int:
    return len(text.encode("utf-8", errors="surrogatepass")) if text else 0


def _message_bytes(m: dict) -> int:
    # an assistant's tool calls and a tool's call id are templated into the prompt as text too
    calls = m.get("tool_calls")
    return (_utf8_len(m.get("content")) + (_utf8_len(json.dumps(calls, ensure_ascii=False)) if calls else 0)
            + _utf8_len(m.get("tool_call_id")))


def _tool_overheads(req: GenerationRequest) -> int:
    """The template text around tools, calls and results (bytes bound tokens only for the
    request's own text)."""
    calls = sum(len(m.get("tool_calls") or ()) + (m.get("role") == "tool") for m in req.messages)
    return (TOOLS_OVERHEAD_TOKENS if req.tools else 0) + calls * TOOL_MESSAGE_OVERHEAD_TOKENS


def _tools_bytes(req: GenerationRequest) -> int:
    """The tool definitions and the answer's schema, which a chat template renders into the prompt."""
    extra = [x for x in (req.tools, req.response_format) if x]
    return sum(_utf8_len(json.dumps(x, ensure_ascii=False)) for x in extra)


def prompt_token_bound(req: GenerationRequest) -> int:
    """Tokens the prompt of ``req`` can at most take once templated and tokenized."""
    if req.messages is not None:
        body = sum(_utf8_len(m.get("role")) + _message_bytes(m) + MESSAGE_OVERHEAD_TOKENS
                   for m in req.messages) + _tools_bytes(req) + _tool_overheads(req)
    else:
        body = _utf8_len(req.prompt)
    return body + REQUEST_OVERHEAD_TOKENS


# A typical count: byte-level BPE vocabularies average about 4 bytes of English text per token,
# and a chat template adds a few tokens per message and to prime the reply (OpenAI's own
# accounting uses 3 and 3).
BYTES_PER_TOKEN = 4
TYPICAL_MESSAGE_TOKENS = 3
TYPICAL_REQUEST_TOKENS = 3


def prompt_token_estimate(req: GenerationRequest) -> int:
    """About how many tokens the prompt of ``req`` takes: what TPM admission takes before the
    model has counted the prompt (the rest of the real count is taken then: admission.confirm),
    and what a request is charged for its prompt when the upstream that served it reported no
    usage (it ignores ``stream_options.include_usage``, or the stream ended before its usage
    event). Below the real count for text of under 4 bytes per token: small vocabularies, code,
    most languages other than English."""
    if req.messages is not None:
        return TYPICAL_REQUEST_TOKENS + -(-_tools_bytes(req) // BYTES_PER_TOKEN) + sum(
            -(-_message_bytes(m) // BYTES_PER_TOKEN) + TYPICAL_MESSAGE_TOKENS for m in req.messages)
    return -(-_utf8_len(req.prompt) // BYTES_PER_TOKEN)
