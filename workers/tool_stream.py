"""Streaming parse of a model's text into content and OpenAI tool-call deltas.

Fed the text deltas of one choice (workers/tool_format.py's call format), it returns what can be
shown now: content text, and tool-call deltas in OpenAI's streamed shape (a call's first delta
carries index, id, type and the function's name with arguments ""; later ones argument
fragments). Text that could still be the start of a call marker is held back until it cannot,
so a call never appears as content, and a call's arguments never include the closing marker.
Whitespace between or after calls is dropped (it is the separator, not an answer).
"""

from __future__ import annotations

import uuid

from workers.tool_format import CALL_CLOSE, CALL_OPEN, NAME_END, TRIGGER


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallStream:
    def __init__(self):
        self.calls = 0  # calls started (each has had its first delta)
        self._buf = ""
        self._state = "text"  # text -> header (after the trigger) -> arguments -> text ...

    def feed(self, delta: str) -> tuple[str, list[dict]]:
        """Add text; returns (content to show, tool-call deltas)."""
        self._buf += delta
        text, calls = "", []
        while True:
            if self._state == "text":
                at = self._buf.find(TRIGGER)
                if at < 0:
                    shown = self._buf[: len(self._buf) - _partial_suffix(self._buf, TRIGGER)]
                    if self.calls and not shown.strip():
                        return text, calls  # whitespace after a call so far: the separator, or held
                    self._buf = self._buf[len(shown):]
                    return text + shown, calls
                before = self._buf[:at]
                if not (self.calls and not before.strip()):
                    text += before
                self._buf, self._state = self._buf[at:], "header"
            elif self._state == "header":
                if not CALL_OPEN.startswith(self._buf[: len(CALL_OPEN)]):  # not our format: it was text
                    text, self._buf, self._state = text + self._buf[: len(TRIGGER)], self._buf[len(TRIGGER):], "text"
                    continue
                end = self._buf.find(NAME_END, len(CALL_OPEN))
                if end < 0:
                    return text, calls
                name = self._buf[len(CALL_OPEN):end]
                calls.append({"index": self.calls, "id": call_id(), "type": "function",
                              "function": {"name": name, "arguments": ""}})
                self.calls += 1
                self._buf, self._state = self._buf[end + len(NAME_END):], "arguments"
            else:
                end = self._buf.find(CALL_CLOSE)
                piece = self._buf if end < 0 else self._buf[:end]
                if end < 0:
                    piece = piece[: len(piece) - _partial_suffix(piece, CALL_CLOSE)]
                if piece:
                    calls.append({"index": self.calls - 1, "function": {"arguments": piece}})
                if end < 0:
                    self._buf = self._buf[len(piece):]
                    return text, calls
                self._buf, self._state = self._buf[end + len(CALL_CLOSE):], "text"

    def close(self) -> tuple[str, list[dict]]:
        """The answer ended: held-back text is content after all (an unfinished call's arguments,
        cut by max_tokens, are sent as they are; a call cut before its name never started)."""
        rest, self._buf = self._buf, ""
        if self._state == "arguments":
            return "", [{"index": self.calls - 1, "function": {"arguments": rest}}] if rest else []
        if self._state == "header" or (self.calls and not rest.strip()):
            return "", []
        return rest, []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
