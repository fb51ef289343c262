"""Judges of a shadow evaluation: scores in [0, 1] for the small and the large tier's answers.

Rules (`routing.shadow.judge.rule`) score each answer on its own; a judge model is asked, in a
pairwise prompt, which of two answers is better, in an order drawn per request from the seed (so
a judge's position bias does not favour one tier), and its verdict is read robustly: a
``[[A]]`` / ``[[B]]`` / ``[[tie]]`` tag as asked for, else the common ways models state a choice.
"""

from __future__ import annotations

import json
import re

import jsonschema

from policies.schema import ShadowJudge


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def rule_scores(judge: ShadowJudge, small: str, large: str, response_format: dict | None = None) -> tuple[float, float]:
    """(small score, large score) under the judge's rule."""
    if judge.rule == "exact":  # the large tier's answer is the reference
        return float(_normal(small) == _normal(large)), 1.0
    if judge.rule == "regex":
        pattern = re.compile(judge.pattern)
        return float(pattern.search(small) is not None), float(pattern.search(large) is not None)
    schema = judge.json_schema
    if schema is None and response_format and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    return _valid_json(small, schema), _valid_json(large, schema)


def _valid_json(text: str, schema: dict | None) -> float:
    try:
        value = json.loads(text)
    except ValueError:
        return 0.0
    if schema is None:
        return 1.0
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.0
    return 1.0


JUDGE_SYSTEM = ("You are an impartial judge. Compare two assistant answers to the same request and decide which "
                "one is more helpful, correct and complete. Ignore their length and order.")


def pairwise_messages(messages: list[dict], first: str, second: str) -> list[dict]:
    """The judge's prompt: the conversation, then answers A and B, then the verdict format."""
    conversation = "\n".join(f"{m.get('role', 'user')}: {_content(m)}" for m in messages)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"[Conversation]\n{conversation}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}"
             "\n\nWhich answer is better? Reply with [[A]], [[B]] or [[tie]]."}]


def _content(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


_TAG = re.compile(r"\[\[\s*(a|b|tie)\s*\]\]", re.I)
_CHOICE = re.compile(
    r"\b(?:answer|assistant|response|option)\s*\(?([ab])\)?\s*(?:is|was)\s*(?:clearly\s*|slightly\s*|much\s*)?"
    r"(?:the\s*)?(?:better|best|superior|preferred|more\s+\w+)", re.I)
_STATED = re.compile(r"\b(?:verdict|winner|choice|preference|better answer|final answer)\s*(?:is)?\s*[:=-]?\s*"
                     r"(?:answer\s*)?[\[(\"']*\s*([ab]|tie)\b", re.I)
_TIE = re.compile(r"\b(?:tie|draw|equally\s+(?:good|bad|correct|helpful)|both\s+(?:are\s+)?equally)\b", re.I)


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'tie', or None when the text states no clear verdict."""
    tags = _TAG.findall(text)
    if tags:
        return _label(tags[-1])
    for pattern in (_STATED, _CHOICE):
        found = {_label(x) for x in pattern.findall(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    bare = text.strip().strip(".!*'\"()[] ").casefold()
    if bare in ("a", "b"):
        return bare.upper()
    if bare in ("tie", "draw", "equal") or _TIE.search(text):
        return "tie"
    return None


def _label(raw: str) -> str:
    return "tie" if raw.lower() == "tie" else raw.upper()


def verdict_scores(verdict: str, small_first: bool) -> tuple[float, float]:
    """(small score, large score) from a verdict on answers shown small-first or large-first."""
    if verdict == "tie":
        return 0.5, 0.5
    small_won = (verdict == "A") == small_first
    return (1.0, 0.0) if small_won else (0.0, 1.0)
