"""An upper bound on a request's prompt tokens, computed before dispatch without a tokenizer.

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

from workers.types import GenerationRequest

# Per chat message: start/end special tokens, separators and headers around the role name.
MESSAGE_OVERHEAD_TOKENS = 8
# Per request: BOS, the generation prompt, a template's default system prompt.
REQUEST_OVERHEAD_TOKENS = 64


def _utf8_len(text: str | None) -> int:
    return len(text.encode("utf-8", errors="surrogatepass")) if text else 0


def prompt_token_bound(req: GenerationRequest) -> int:
    """Tokens the prompt of ``req`` can at most take once templated and tokenized."""
    if req.messages is not None:
        body = sum(_utf8_len(m.get("role")) + _utf8_len(m.get("content")) + MESSAGE_OVERHEAD_TOKENS
                   for m in req.messages)
    else:
        body = _utf8_len(req.prompt)
    return body + REQUEST_OVERHEAD_TOKENS
