"""The logits-processing seam: what happens to one row's logits between the forward and sampling.

Every per-request rule about the next token is a processor on this seam: presence/frequency
penalties, `logit_bias`, a grammar's token mask (workers/grammar.py). A sequence that asks for
none of them, nor for logprobs, gets no `RowLogits` at all (`row_logits` returns None): the engine
then samples it exactly as before, greedy rows from the batch's one argmax call, so unconstrained
rows pay nothing. The scheduler and the model runner know only `RowLogits.sample` and `accept`;
they never learn about schemas, tools or penalties (as vLLM v1's logits processors and
structured-output manager sit between its model runner and sampler).

Order per step: processors in the order built (penalties, bias, then the grammar's mask, so a
bias can never un-mask a token the grammar forbids), then logprobs of the processed row (before
temperature and top-p: OpenAI's logprobs describe the model's distribution, not the sampler's),
then the sampler (workers/sampling.py) with the sequence's own generator.
"""

from __future__ import annotations

from typing import Protocol

import torch

from workers.sampling import sample_next
from workers.types import GenerationRequest


class LogitsProcessor(Protocol):
    """One rule on a row's next-token logits; keeps its own state per sequence."""

    def apply(self, logits: torch.Tensor) -> None:
        """Change a 1-D float32 row in place."""

    def accept(self, token: int) -> None:
        """The token sampled from this row (to update counts, advance a matcher)."""


class Penalties:
    """OpenAI's presence and frequency penalties over the tokens generated so far: token t's logit
    drops by `frequency * count(t) + presence * (count(t) > 0)`. Kept as one dense vector updated
    per accepted token, so applying it is one subtraction whatever the answer's length."""

    def __init__(self, vocab: int, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency
        self.penalty = torch.zeros(vocab)
        self._seen: set[int] = set()

    def apply(self, logits: torch.Tensor) -> None:
        logits.sub_(self.penalty)

    def accept(self, token: int) -> None:
        if 0 <= token < self.penalty.numel():
            self.penalty[token] += self.frequency + (0.0 if token in self._seen else self.presence)
            self._seen.add(token)


class LogitBias:
    """OpenAI's `logit_bias`: a fixed amount added to chosen token ids' logits (ids outside the
    model's vocabulary are ignored: there is no such token to bias)."""

    def __init__(self, bias: dict[int, float], vocab: int):
        kept = {int(t): float(b) for t, b in bias.items() if 0 <= int(t) < vocab}
        self.ids = torch.tensor(list(kept), dtype=torch.long)
        self.values = torch.tensor(list(kept.values()), dtype=torch.float32)

    def apply(self, logits: torch.Tensor) -> None:
        logits.index_add_(0, self.ids, self.values)

    def accept(self, token: int) -> None:
        pass


class RowLogits:
    """One sequence's processors, its sampler, and the logprobs it owes its client.

    `grammar` is the grammar processor when there is one (also in `processors`): the engine asks it
    whether the answer is complete. `vocab` turns ids into OpenAI's token text and bytes."""

    def __init__(self, processors: list[LogitsProcessor], temperature: float, top_p: float,
                 gen: torch.Generator, top_logprobs: int | None = None, vocab=None, grammar=None):
        self.processors = processors
        self.temperature, self.top_p, self.gen = temperature, top_p, gen
        self.top_logprobs = top_logprobs  # None: no logprobs asked for
        self.vocab = vocab
        self.grammar = grammar
        self.pending_logprobs: list[dict] = []  # entries not yet sent with a chunk

    def sample(self, logits: torch.Tensor) -> int:
        # a copy: the row may be shared (a prefill's logits feed every choice of an n > 1 request)
        row = logits.to(torch.float32, copy=True)
        for processor in self.processors:
            processor.apply(row)
        token = sample_next(row, self.temperature, self.top_p, self.gen)
        if self.top_logprobs is not None:
            self.pending_logprobs.append(self._entry(row, token))
        return token

    def accept(self, token: int) -> None:
        for processor in self.processors:
            processor.accept(token)

    @property
    def done(self) -> bool:
        """The grammar accepted a stop token: the answer is complete."""
        return self.grammar is not None and self.grammar.terminated

    @property
    def complete(self) -> bool:
        """A JSON answer whose root value has closed (nothing but a stop token may follow): one
        that reaches max_tokens exactly there ended valid, not cut."""
        return self.grammar is not None and self.grammar.kind != "tool_call" and self.grammar.completed

    def take_logprobs(self) -> list[dict] | None:
        """The entries of the tokens sampled since the last call (None when none are owed)."""
        if self.top_logprobs is None:
            return None
        out, self.pending_logprobs = self.pending_logprobs, []
        return out

    def _entry(self, row: torch.Tensor, token: int) -> dict:
        logprobs = torch.log_softmax(row, dim=-1)
        entry = self.vocab.entry(token, float(logprobs[token]))
        top = []
        if self.top_logprobs:
            values, ids = torch.topk(logprobs, min(self.top_logprobs, logprobs.numel()))
            # a token the mask forbids has logprob -inf: not a candidate, and not JSON
            top = [self.vocab.entry(i, v) for i, v in zip(ids.tolist(), values.tolist()) if v != float("-inf")]
        entry["top_logprobs"] = top
        return entry


class TokenVocab:
    """Token id -> OpenAI's logprob entry fields: the token's text and its UTF-8 bytes (a byte-level
    BPE token may hold part of a character; its bytes are exact, its text has U+FFFD there)."""

    def __init__(self, tokenizer, token_bytes: list[bytes] | None = None):
        self._tokenizer = tokenizer
        self._bytes = token_bytes
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def entry(self, token: int, logprob: float) -> dict:
        known = self._cache.get(token)
        if known is None:
            raw = self._bytes[token] if self._bytes is not None and token < len(self._bytes) else b""
            text = raw.decode("utf-8", errors="replace") if raw else self._tokenizer.decode([token])
            known = self._cache[token] = (text, list(raw or text.encode("utf-8")))
        return {"token": known[0], "logprob": logprob, "bytes": list(known[1])}


def wants_processing(req: GenerationRequest) -> bool:
    """Whether a request needs a RowLogits (anything but plain temperature / top-p sampling)."""
    return bool(req.presence_penalty or req.frequency_penalty or req.logit_bias or req.logprobs)


def row_logits(req: GenerationRequest, gen: torch.Generator, vocab_size: int, vocab: TokenVocab | None,
               grammar: LogitsProcessor | None = None) -> RowLogits | None:
    """The seam's one constructor: this request's processors, or None when it needs none (the
    engine's fast path)."""
    if grammar is None and not wants_processing(req):
        return None
    processors: list[LogitsProcessor] = []
    if req.presence_penalty or req.frequency_penalty:
        processors.append(Penalties(vocab_size, req.presence_penalty, req.frequency_penalty))
    if req.logit_bias:
        processors.append(LogitBias(req.logit_bias, vocab_size))
    if grammar is not None:
        processors.append(grammar)
    top = (req.top_logprobs or 0) if req.logprobs else None
    return RowLogits(processors, req.temperature, req.top_p, gen, top, vocab, grammar)
