"""Turn an OpenAI chat request (or a plain prompt) into the text the router looks at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class RequestText:
    """What the complexity features are computed from.

    ``user`` is every user turn joined by a blank line: that is what the training prompts look
    like (a multi-turn MT-Bench prompt is its turns joined the same way), so lexical features
    see the same kind of text in training and serving. System and assistant text is only
    measured (``context_chars``), never hashed, so a long boilerplate system prompt cannot
    drown the user's question.
    """

    user: str
    last_user: str
    user_turns: int
    context_chars: int
    has_system: bool


def _content_text(content: Any) -> str:
    # OpenAI content is a string, None (assistant tool calls) or a list of typed parts.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text") or ""))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def from_messages(messages: Iterable[Mapping[str, Any]]) -> RequestText:
    """Collect user turns and context size from OpenAI-style ``messages``."""
    user_parts: list[str] = []
    context_chars = 0
    has_system = False
    for message in messages:
        role = message.get("role", "user")
        text = _content_text(message.get("content"))
        if role == "user":
            user_parts.append(text)
        else:
            context_chars += len(text)
            has_system = has_system or role in ("system", "developer")
    return RequestText(
        user="\n\n".join(user_parts),
        last_user=user_parts[-1] if user_parts else "",
        user_turns=len(user_parts),
        context_chars=context_chars,
        has_system=has_system,
    )


def from_prompt(prompt: str) -> RequestText:
    """A plain completion prompt is one user turn."""
    prompt = prompt or ""
    return RequestText(user=prompt, last_user=prompt, user_turns=1, context_chars=0, has_system=False)


def from_request(messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None) -> RequestText:
    """Exactly one of ``messages`` / ``prompt`` should be given; ``messages`` wins if both are."""
    if messages is not None:
        return from_messages(messages)
    if prompt is not None:
        return from_prompt(prompt)
    raise ValueError("give messages or prompt")
