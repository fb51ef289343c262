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
        self._matcher = _StopMatcher(self._stop) if self._stop else None
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
            if self._matcher is not None:  # match again over the text not yet sent
                self._matcher.reset(max(0, self._emitted - self._max_stop))
        self._prefix, self._read = self._read, len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be sent now ("" if none)."""
        self._ids.append(token_id)
        self._decode_new()
        text = self._text
        if self._matcher is None:
            return self._take(text, len(text))
        if self._matcher.feed(text):
            # where the earliest stop string starts (once per answer)
            start = max(0, self._emitted - self._max_stop)
            hits = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
            self.stopped = True
            return self._take(text, min(hits))
        return self._take(text, len(text) - min(self._matcher.partial, len(text) - self._emitted))

    def flush(self) -> str:
        """Text still held back when generation ends without a stop string (an incomplete last
        character included, as the decoder renders it)."""
        if self.stopped:
            return ""
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)  # once per answer
        return self._take(text, len(text))

    def _take(self, text: str, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta = text[self._emitted : end]
        self._emitted = end
        return delta


class _StopMatcher:
    """Knuth-Morris-Pratt over the decoded text, one automaton per stop string: each character is
    fed once, so the work per token is its new characters times the stop strings (amortised),
    not the stop strings' length squared as a re-scan of every suffix would be."""

    def __init__(self, stops: list[str]):
        self._stops = stops
        self._fail = [_failure(s) for s in stops]
        self.reset(0)

    def reset(self, position: int) -> None:
        """Forget the state; the next feed reads the text from ``position``."""
        self._fed = position
        self._state = [0] * len(self._stops)  # per stop: how much of it the text now ends with

    @property
    def partial(self) -> int:
        """Length of the longest suffix of the text fed that is a proper prefix of a stop string."""
        return max(self._state)

    def feed(self, text: str) -> bool:
        """Read ``text`` past what was fed before; True once a stop string has appeared."""
        new, self._fed = text[self._fed:], len(text)
        hit = False
        for j, (stop, fail) in enumerate(zip(self._stops, self._fail)):
            k = self._state[j]
            for ch in new:
                while k and stop[k] != ch:
                    k = fail[k - 1]
                if stop[k] == ch:
                    k += 1
                    if k == len(stop):
                        hit = True
                        k = fail[k - 1]
            self._state[j] = k
        return hit


def _failure(s: str) -> list[int]:
    """KMP's table: fail[i] = length of the longest proper prefix of s[:i+1] that is also its suffix."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail
