"""Incremental detokenization with stop strings.

Tokens arrive one at a time; the text they decode to may end in half a UTF-8 character or in
the first letters of a stop string. Neither may reach the client: a stop string must never be
sent, so text that could still turn into one is held back until it cannot.
"""

from __future__ import annotations


class StopTextStream:
    """Turns a growing list of token ids into safe text deltas; finds stop strings."""

    def __init__(self, tokenizer, stop: list[str]):
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self._text = ""  # the decoded text of every complete character so far
        # Only a window of recent tokens is decoded per token (decoding all of them made each
        # token cost O(answer length)): the text of ids[_prefix:] minus that of ids[_prefix:_read]
        # is the new text; the earlier tokens in the window give the decoder the context it needs
        # for spaces and merges, as incremental detokenizers in serving engines do.
        self._prefix = 0
        self._read = 0
        self._emitted = 0  # characters of the decoded text already sent
        self.stopped = False

    def _decode_new(self) -> None:
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next token
            return
        if after.startswith(before):
            self._text += after[len(before):]
        else:  # the window's text is not an extension of what it was (rare): decode everything
            full = decode(self._ids, skip_special_tokens=True)
            if full.endswith("\ufffd"):
                return
            self._text = full
        self._prefix, self._read = self._read, len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be sent now ("" if none)."""
        self._ids.append(token_id)
        self._decode_new()
        text = self._text
        if self._stop:
            start = max(0, self._emitted - self._max_stop)
            hits = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                return self._take(text, min(hits))
        return self._take(text, len(text) - self._held_back(text))

    def flush(self) -> str:
        """Text still held back when generation ends without a stop string (an incomplete last
        character included, as the decoder renders it)."""
        if self.stopped:
            return ""
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)  # once per answer
        return self._take(text, len(text))

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        for n in range(min(self._max_stop - 1, len(text) - self._emitted), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0

    def _take(self, text: str, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta = text[self._emitted : end]
        self._emitted = end
        return delta
