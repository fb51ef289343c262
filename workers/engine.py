"""One resident model: a scheduler thread that batches every running sequence, streaming tokens.

Continuous batching: each step reads as three verbs. Schedule: drop cancelled sequences, admit
waiting ones into a KV row each (starting from a cached prefix when their prompt extends a
finished sequence's tokens), and plan the step: prompt chunks to prefill within a token budget,
plus every decoding sequence. Run: one forward per prefill chunk, then ONE forward for the whole
batch (rows of a slotted KV cache, each with its own position and mask). Update: sample each
sequence with its own generator, detokenize, check stops, emit; finished sequences leave (their KV
filed in the prefix cache). Sequences join and leave at token granularity, and nothing one
sequence does changes another's tokens. A paused model's sequences can be preempted at a step
boundary (`preempt`: their KV released, everything else kept) and put into another engine of the
same model (`resume`), which re-prefills their tokens without sampling and decodes on from the
last sampled token: the same tokens and the same stream as without the interruption. A greedy
sequence given a draft model is verified speculatively (workers/speculative.py): its own forward
over several drafted tokens per step, outside the batched decode, while few sequences decode
(with many, batching already keeps the model busy and the extra forwards would cost the others).

Why not transformers' own continuous batching (ContinuousBatchingManager / paged attention, as
of 5.24): it samples inside its compiled forward with the global RNG and one `do_sample` for all
requests, so per-request seeded generators, nucleus sampling exactly as workers/sampling.py
does it, and stop strings cannot be honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import AsyncIterator, Callable

import torch

from workers.batching import RunningBatch, StepOutput, StepPlan
from workers.choice_output import ChoiceOutput
from workers.decode_attention import use_cpu_decode_attention
from workers.detok import StopTextStream
from workers.dtypes import default_dtype
from workers.fair_queue import FairQueue
from workers.grammar import GrammarMask, TokenizerGrammars, grammar_spec
from workers.kv_cache import KVShape
from workers.logits import TokenVocab, row_logits
from workers.prefix_cache import PrefixCache
from workers.sampling import make_generator, sample_next
from workers.sequence import Sequence
from workers.sequence_stream import DONE, PREEMPTED, Preempted, SequenceStream
from workers.speculative import DraftState, accepted_prefix
from workers.tool_format import render_chat
from workers.tool_stream import ToolCallStream
from workers.types import ContextLengthExceeded, GenerationChunk, GenerationRequest

log = logging.getLogger(__name__)
_EMA = 0.2  # weight of the latest measurement in the step-time averages

DEFAULT_PREFIX_CACHE_BYTES = 256 << 20
DEFAULT_PREFILL_CHUNK_TOKENS = 256
DEFAULT_IDLE_RELEASE_S = 2.0
DEFAULT_SPECULATE_MAX_BATCH = 4
# a request waiting for KV room is passed by at most this many later (smaller) requests; then
# admission holds for it, so it runs once the sequences running then free their KV
DEFAULT_MAX_BYPASS = 8


# Prompts larger than this (characters, plus a template's cost per message) are encoded in a
# worker thread: a 1 MiB body of tiny messages takes a chat template seconds to render.
OFF_LOOP_ENCODE_CHARS = 16 * 1024
MESSAGE_ENCODE_CHARS = 256  # what one message costs the template, in characters of plain text


def _prompt_chars(req: GenerationRequest) -> int:
    if req.messages is None:
        return len(req.prompt or "")
    return sum(len(m.get("content") or "") + MESSAGE_ENCODE_CHARS
               for m in req.messages) + MESSAGE_ENCODE_CHARS * len(req.tools or ())


class Engine:
    """Generation for one loaded model. Thread-safe `generate`; one scheduler thread.

    `prefix_cache_bytes` bounds the KV kept from finished sequences for reuse (0 disables reuse);
    `prefill_chunk_tokens` bounds the prompt tokens prefilled per step while others are decoding,
    so a long prompt delays their next token by one chunk, not by the whole prompt;
    `idle_release_s`: after this long with nothing to run, the KV slots' memory is given back
    (kept across shorter gaps, such as an agent's turns, to spare reallocating it);
    `speculate_max_batch`: sequences with a draft are verified speculatively only while at most
    this many sequences decode; beyond it they join the batched decode;
    `kv_budget_bytes`: the most the running batch's KV may hold (the pool's reservation for it).
    A sequence is admitted only when every admitted one could reach its full length (prompt +
    max_tokens) within it, so the batch never outgrows it; one that could not fit even alone is
    refused like a context overflow. None: bounded by `max_running` and the context only.
    Waiting requests are taken in weighted fair order by team (workers/fair_queue.py); one that
    does not fit yet is passed by later ones that do (no head-of-line blocking), at most
    `max_bypass` times, after which nothing behind it is admitted until it is (no starvation).
    `on_idle`: called on the scheduler thread (its lock held: it must only hand off, e.g. with
    `loop.call_soon_threadsafe`) when the engine becomes `idle` after running steps, so a pool
    waiting to evict this model learns the moment it may.
    """

    def __init__(self, name: str, model, tokenizer, device: str = "cpu", max_running: int = 64, *,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
                 prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
                 idle_release_s: float = DEFAULT_IDLE_RELEASE_S,
                 speculate_max_batch: int = DEFAULT_SPECULATE_MAX_BATCH,
                 kv_budget_bytes: int | None = None, on_idle: Callable[[], None] | None = None,
                 max_bypass: int = DEFAULT_MAX_BYPASS):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        if device == "cpu":  # one-token decode attention without SDPA's CPU flash kernel (5x faster in bf16)
            use_cpu_decode_attention(model)
        self.max_running = max_running
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.idle_release_s = idle_release_s
        self.speculate_max_batch = speculate_max_batch
        self.max_bypass = max_bypass
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = _eos_ids(model, tokenizer)
        # structured outputs: grammars for this tokenizer, compiled on first use and cached
        self.grammars = TokenizerGrammars(tokenizer, int(model.config.vocab_size), self.eos_ids)
        self._vocab: TokenVocab | None = None  # token texts and bytes, for logprobs
        self._bos = getattr(model.config, "bos_token_id", None)
        self._shape = KVShape.of(model)
        window = getattr(model.config, "sliding_window", None)
        if window and window < self.context_length:
            log.warning("engine %s: the model's %d-token sliding window is not applied by the batched "
                        "engine's masks; sequences longer than it will differ from model.generate", name, window)
        # positions the KV budget holds: rows x longest row of the dense batch may not exceed it
        self.kv_budget_tokens = None if kv_budget_bytes is None else kv_budget_bytes // self._shape.bytes_per_token
        self._batch = RunningBatch(self._shape, max_running, self.context_length, placeholder_token=self._bos or 0,
                                   max_bytes=kv_budget_bytes)
        self._prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._waiting: FairQueue[Sequence] = FairQueue()
        self._running: list[Sequence] = []  # admitted: prefilling or decoding
        self._wake = threading.Condition()
        self._closed = False
        # True from when a step is planned until the scheduler finds nothing left to run: a
        # cancelled sequence's step still runs to its end on the weights (changed under _wake)
        self._stepping = False
        self.on_idle = on_idle
        self.busy_seconds = 0.0  # time spent in forward passes, for GPU-second attribution
        self.prefix_hit_tokens = 0  # prompt tokens whose KV was reused instead of computed
        self.prefill_tokens = 0  # prompt tokens computed
        self.draft_proposed = 0  # speculative decoding: tokens drafted, and accepted by this model
        self.draft_accepted = 0
        self.speculative_steps = 0  # verify forwards
        self.preempted = 0  # sequences taken out by `preempt`
        self.recomputed_tokens = 0  # KV positions of resumed sequences computed again (prefix cache hits not counted)
        # measured, for preemption's cost rule: one batched decode forward, and prefill per token
        self.decode_step_seconds = 0.0
        self.prefill_token_seconds = 0.0
        self._preempt_asked: tuple[bool, float] | None = None  # set by `preempt` until the scheduler acts
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, name: str, path: str, device: str = "cpu", dtype: str | None = None, **kw) -> "Engine":
        """Load a Hugging Face checkpoint directory (the zoo's or a real one), through the same
        loader the pool uses for a cold load."""
        from workers.weights import load_cold, load_tokenizer

        torch_dtype = getattr(torch, dtype or default_dtype(device))
        model, tokenizer = load_cold(path, torch_dtype, device), load_tokenizer(path)
        return cls(name, model, tokenizer, device=device, **kw)

    # ---- request side (any thread / event loop) -------------------------------------------

    @property
    def in_flight(self) -> int:
        """Sequences still wanted by someone (cancelled ones leave at the next step)."""
        with self._wake:
            return sum(1 for s in (*self._waiting, *self._running) if not (s.cancelled or s.finished))

    @property
    def queued(self) -> int:
        """Requests waiting for admission (a request's choices count once)."""
        with self._wake:
            return sum(1 for s in self._waiting if not s.cancelled)

    @property
    def idle(self) -> bool:
        """Not inside a step and no sequence wanted by anyone: nothing runs on the weights (its own,
        or a draft model lent to one of its sequences) until a new request comes. Only then may
        the pool evict it."""
        with self._wake:
            return not self._stepping and not any(not (s.cancelled or s.finished)
                                                  for s in (*self._waiting, *self._running))

    def lends(self, draft_model) -> bool:
        """Whether a sequence still here (waiting, or in the running batch, whose members leave only
        between steps: a step in progress counts) speculates with `draft_model`'s weights."""
        with self._wake:
            return any(s.draft is not None and s.draft.model is draft_model for s in (*self._waiting, *self._running))

    @property
    def kv_bytes(self) -> int:
        """Bytes held for KV: the running batch's slots plus the prefix cache."""
        return self._batch.cache.nbytes + (self._prefix.nbytes if self._prefix else 0)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token of one sequence takes (for sizing budgets)."""
        return self._shape.bytes_per_token

    def clear_prefix_cache(self) -> None:
        if self._prefix is not None:
            self._prefix.clear()

    def cached_prefix_tokens(self, prompt_ids: list[int], salt: str | None = None) -> int:
        """How many leading tokens of this prompt would be reused from the prefix cache (`salt`: the
        request's `cache_salt`)."""
        if self._prefix is None:
            return 0
        return min(self._prefix.match_length(prompt_ids, salt), max(0, len(prompt_ids) - 1))

    def encode(self, req: GenerationRequest) -> list[int]:
        """Prompt token ids: the chat template for messages, the raw text for a prompt."""
        if req.messages is not None:
            text = render_chat(self.tokenizer, req)  # tools too (workers/tool_format.py)
        else:
            text = req.prompt
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def budget(self, prompt_ids: list[int], req: GenerationRequest) -> int:
        """How many tokens may be generated; refuses what the context (or the KV budget) cannot hold.
        Each of a request's `n` choices may reach prompt + max_tokens, so they share the KV budget."""
        n = max(1, req.n)
        if n > self.max_running:
            raise ContextLengthExceeded(f"n={n} choices exceed the {self.max_running} sequences this model "
                                        "decodes at once", context_length=self.context_length)
        limit = self.context_length if self.kv_budget_tokens is None else min(self.context_length, self.kv_budget_tokens // n)
        room = limit - len(prompt_ids)
        if room <= 0 or (req.max_tokens is not None and req.max_tokens > room):
            asked = len(prompt_ids) + (req.max_tokens or 0)
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {asked} tokens ({len(prompt_ids)} in the prompt, {req.max_tokens or 0} in the "
                "completion). Please reduce the prompt or max_tokens.",
                context_length=limit,
                prompt_tokens=len(prompt_ids),
            )
        return room if req.max_tokens is None else req.max_tokens

    async def generate(self, req: GenerationRequest, draft=None) -> AsyncIterator[GenerationChunk]:
        """Stream the answer; the last chunk carries finish_reason and exact token counts.
        Closing the iterator early (client gone) frees the sequence's slot and KV at the next step.
        `draft`: a model sharing this one's tokenizer that drafts `req.draft_tokens` tokens per
        step for speculative decoding (greedy requests only; the output is the same either way)."""
        # A long chat (many messages or much text) takes its template and tokenizer a while:
        # off the event loop, which serves every other stream of this replica meanwhile.
        prompt_ids = (self.encode(req) if _prompt_chars(req) <= OFF_LOOP_ENCODE_CHARS
                      else await asyncio.to_thread(self.encode, req))
        if not prompt_ids and self._bos is not None:
            prompt_ids = [self._bos]  # the model needs at least one token to predict from
        max_new = self.budget(prompt_ids, req)
        n = max(1, req.n)
        spec = grammar_spec(req)
        compiled = None
        if spec is not None:  # a miss compiles off the event loop (milliseconds to seconds)
            compiled = self.grammars.cached(spec) or await asyncio.to_thread(self.grammars.compile, spec)
        if req.logprobs and self._vocab is None:  # the token table, once (a large vocabulary takes a while)
            self._vocab = TokenVocab(self.tokenizer, await asyncio.to_thread(self.grammars.token_bytes))
        if max_new == 0:
            for index in range(n):
                yield GenerationChunk("", "length", len(prompt_ids), 0, index=index)
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone
                for seq in seqs:
                    seq.cancelled = True

        seqs = [self._sequence(req, prompt_ids, max_new, index, spec, compiled, emit) for index in range(n)]
        first = seqs[0]
        first.forks = seqs[1:]
        for seq in first.forks:
            seq.parent = first
        if draft is not None and n == 1 and first.logits is None and req.temperature <= 0.0 and req.draft_tokens > 0:
            first.draft = DraftState(draft, req.draft_tokens)  # constrained or processed rows never speculate
        async with contextlib.aclosing(self._served(SequenceStream(first, seqs, queue))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def resume(self, preempted: Preempted) -> AsyncIterator[GenerationChunk]:
        """Serve on a stream preempted from an engine of this same model (the one before it was
        swapped out, or this one): its sequences re-prefill the tokens their KV held, without
        sampling, then decode on from their last sampled token, emitting into the same stream.
        Call it on the event loop that consumed the stream before."""
        first = preempted.stream.first
        rows = 1 + len(first.forks)
        if self.kv_budget_tokens is not None and rows * _full_length(first) > self.kv_budget_tokens:
            raise ContextLengthExceeded(f"this engine's KV budget ({self.kv_budget_tokens} tokens) cannot hold the "
                                        "preempted request", context_length=self.context_length)
        async with contextlib.aclosing(self._served(preempted.stream)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _served(self, stream: SequenceStream) -> AsyncIterator[GenerationChunk]:
        """Queue the stream's request for admission and yield its chunks."""
        first, req = stream.first, stream.first.req
        for seq in stream.seqs:
            seq.entered = time.monotonic()
        with self._wake:
            self._waiting.push(first, req.team, len(stream.seqs) * _full_length(first), req.weight, req.priority)
            self._wake.notify()
        async with contextlib.aclosing(stream.chunks()) as chunks:
            async for chunk in chunks:
                yield chunk

    def preempt(self, finish_if_cheaper: bool = True, entered_before: float | None = None) -> None:
        """Take the sequences out at the next step boundary (on the scheduler thread): every waiting
        one, and every running one except the choices of an n > 1 request (they finish) and, with
        `finish_if_cheaper`, one whose remaining tokens take less time to decode than its KV takes
        to recompute (measured step times; unmeasured: preempted). `entered_before` (monotonic
        seconds): only the requests submitted or resumed here before then. A taken-out sequence's
        KV row is released (filed in the prefix cache, which may spare its refill if this engine
        serves it on), its draft dropped; its stream raises `Preempted`, for `resume` on an engine
        of this model."""
        with self._wake:
            self._preempt_asked = (finish_if_cheaper, float("inf") if entered_before is None else entered_before)
            self._wake.notify()

    def _sequence(self, req: GenerationRequest, prompt_ids: list[int], max_new: int, index: int, spec, compiled,
                  emit) -> Sequence:
        """Choice `index` of a request: its own generator (seed + index when seeded), logits
        processors, text stream and output shaping."""
        gen = make_generator(None if req.seed is None else req.seed + index)
        grammar = None if compiled is None else GrammarMask(compiled, self.grammars.vocab_size, spec.kind)
        logits = row_logits(req, gen, self.grammars.vocab_size, self._vocab, grammar)
        tools = ToolCallStream() if spec is not None and spec.kind == "tool_call" else None
        output = ChoiceOutput(index, tools, spec.kind if spec is not None else None, logits)
        return Sequence(req, prompt_ids, max_new, StopTextStream(self.tokenizer, req.stop), gen, emit,
                        logits=logits, output=output)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    # ---- scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while (plan := self._schedule()) is not None:
                try:
                    out = self._run(plan)
                    self._update(plan, out)
                except Exception as exc:  # the loop must outlive any one step: fail its sequences
                    for seq in [*(s for s, _ in plan.prefill), *plan.decode, *plan.speculate]:
                        if not seq.finished:
                            self._fail(seq, exc)
        with self._wake:
            left = [*self._waiting.clear(), *self._running]
            self._running = []
        for seq in left:
            if not (seq.finished or seq.cancelled):
                seq.emit(RuntimeError(f"engine {self.name} closed"))

    def _schedule(self) -> StepPlan | None:
        """Drop what is done, admit what fits, and plan this step's prefill chunks and decode batch."""
        with self._wake:
            while True:
                for seq in self._running:
                    if seq.cancelled and not seq.finished:
                        self._release(seq)
                self._running = [s for s in self._running if not (s.finished or s.cancelled)]
                if self._preempt_asked is not None:
                    self._take_out(*self._preempt_asked)
                    self._preempt_asked = None
                admitted = self._take_admissible()
                if self._closed:
                    self._stepping = False
                    return None
                if self._running:
                    self._stepping = True
                    break
                if self._stepping:  # the last step's sequences are gone: the weights are free now
                    self._stepping = False
                    if self.on_idle is not None:
                        try:
                            self.on_idle()
                        except Exception:  # the scheduler must outlive its listener
                            log.exception("engine %s: on_idle failed", self.name)
                if not self._wake.wait(timeout=self.idle_release_s if self._batch.cache.data is not None else None):
                    self._batch.cache.release()  # idle for a while: give the KV slots back
        for seq in admitted:
            self._admit(seq)
        plan = StepPlan(decode=[s for s in self._running if s.decoding])
        if len(plan.decode) <= self.speculate_max_batch:
            plan.speculate = [s for s in plan.decode if s.draft is not None]
            plan.decode = [s for s in plan.decode if s.draft is None]
        # nobody waits on a decode token when no one decodes: prefill whole prompts then
        budget = self.prefill_chunk_tokens if plan.decode or plan.speculate else max(self.prefill_chunk_tokens, self.context_length)
        for seq in self._running:
            if not seq.decoding and not seq.awaiting_fork and budget > 0:
                n = min(seq.prompt_left, budget)
                plan.prefill.append((seq, n))
                budget -= n
        return plan

    def _take_out(self, finish_if_cheaper: bool, entered_before: float) -> None:
        """Preempt (see `preempt`): runs at a step boundary, the lock held."""
        # never admitted: nothing to recompute
        taken = [seq for seq in self._waiting if not seq.cancelled and seq.entered < entered_before]
        for seq in taken:
            self._waiting.drop(seq)
        kept = []
        for seq in self._running:
            if (seq.forks or seq.parent is not None or seq.entered >= entered_before
                    or (finish_if_cheaper and self._finishing_is_cheaper(seq))):
                kept.append(seq)
                continue
            if self._prefix is not None and seq.decoding:
                self._prefix.insert(seq.kv_tokens(), self._batch.export(seq), seq.req.cache_salt)
            self._release(seq)
            taken.append(seq)
        self._running = kept
        for seq in taken:
            for choice in (seq, *seq.forks):
                choice.taken_out()
            self.preempted += 1 + len(seq.forks)
            seq.emit(PREEMPTED)  # one per request: its choices share the stream

    def _finishing_is_cheaper(self, seq: Sequence) -> bool:
        """Decoding its remaining tokens (at the measured step time) takes less than recomputing its
        KV would (at the measured prefill time per token)."""
        if not seq.decoding or not self.decode_step_seconds or not self.prefill_token_seconds:
            return False
        left = seq.max_new_tokens - seq.generated
        return left * self.decode_step_seconds < len(seq.kv_tokens()) * self.prefill_token_seconds

    def _take_admissible(self) -> list[Sequence]:
        """Move waiting requests that fit into the running batch, in fair order (a request's
        choices together). One that does not fit is skipped, so a long request waiting for KV room
        does not hold up short ones behind it; but once a skipped one has been passed `max_bypass`
        times, admission stops at it until the running sequences' KV leaves room for it.
        Runs every step: one pass, the running batch's longest row computed once."""
        admitted: list[Sequence] = []
        skipped: list[Sequence] = []
        longest = max((_full_length(s) for s in self._running), default=0)
        for seq in self._waiting:
            if len(self._running) >= self.max_running:
                break
            if seq.cancelled:
                self._waiting.drop(seq)
                continue
            if not self._fits(seq, longest):
                skipped.append(seq)
                continue
            if any(s.bypassed >= self.max_bypass for s in skipped):
                break
            for s in skipped:
                s.bypassed += 1
            self._waiting.take(seq)
            self._running.extend([seq, *seq.forks])
            admitted.extend([seq, *seq.forks])
            longest = max(longest, _full_length(seq))
        return admitted

    def _fits(self, seq: Sequence, longest: int) -> bool:
        """Whether admitting `seq` (and its choices) keeps the batch within `max_running` rows and
        its worst case (every admitted sequence at its full length, rows of the dense cache as long
        as the longest, `longest` so far) within the KV budget."""
        rows = len(self._running) + 1 + len(seq.forks)
        if rows > self.max_running:
            return False
        return self.kv_budget_tokens is None or rows * max(longest, _full_length(seq)) <= self.kv_budget_tokens

    def _run(self, plan: StepPlan) -> StepOutput:
        """The model calls: each prefill chunk, then one forward for every row."""
        started = time.perf_counter()
        out = StepOutput({}, {})
        for seq, n in plan.prefill:
            refill, begun = seq.refilling, time.perf_counter()
            try:
                logits = self._batch.prefill(self.model, seq, n)
            except Exception as exc:  # one bad prompt must not take the others down
                out.failed.append((seq, exc))
                continue
            self.prefill_token_seconds = _average(self.prefill_token_seconds, (time.perf_counter() - begun) / n)
            if refill:
                self.recomputed_tokens += n
                out.refilled.add(id(seq))
            else:
                self.prefill_tokens += n
            if logits is not None:
                out.prefill_logits[id(seq)] = logits
                for fork in seq.forks:  # n > 1: the other choices start from this prefill
                    if not (fork.cancelled or fork.finished):
                        self._batch.fork(seq, fork)
                        out.prefill_logits[id(fork)] = logits
        if plan.decode:
            try:
                begun = time.perf_counter()
                logits = self._batch.decode(self.model, plan.decode)
                self.decode_step_seconds = _average(self.decode_step_seconds, time.perf_counter() - begun)
                out.decode_logits = {id(s): logits[s.row] for s in plan.decode}
                plain = [s for s in plan.decode if s.req.temperature <= 0.0 and s.logits is None]
                if plain:  # rows with logits processors are argmaxed after them, in _update
                    greedy = logits.argmax(-1).tolist()  # one call (and one device sync) for every greedy row
                    out.greedy = {id(s): greedy[s.row] for s in plain}
            except Exception as exc:
                out.failed.extend((seq, exc) for seq in plan.decode)
        out.seconds = time.perf_counter() - started
        for seq in plan.speculate:
            begun = time.perf_counter()
            try:
                out.speculated[id(seq)] = self._speculate(seq)
            except Exception as exc:
                out.failed.append((seq, exc))
            out.speculate_seconds[id(seq)] = time.perf_counter() - begun
        self.busy_seconds += out.seconds + sum(out.speculate_seconds.values())
        return out

    def _speculate(self, seq: Sequence) -> list[int]:
        """One speculative step for a greedy sequence: draft, verify in one forward, keep the KV
        of what was accepted. Returns the tokens to emit (1 .. draft_tokens + 1)."""
        fed = self._batch.cache.lengths[seq.row]  # KV positions before this step
        # never draft past what the sequence may still emit (the verify adds one token of its own)
        k = min(seq.draft.tokens, seq.max_new_tokens - seq.generated - 1)
        proposals = seq.draft.propose(seq.prompt_ids + seq.output_ids, k) if k > 0 else []
        logits = self._batch.verify(self.model, seq, [seq.output_ids[-1], *proposals])
        tokens = accepted_prefix(proposals, logits.argmax(-1).tolist())
        self._batch.truncate(seq, fed + len(tokens))  # the last token's KV comes with the next step
        self.draft_proposed += len(proposals)
        self.draft_accepted += len(tokens) - 1
        self.speculative_steps += 1
        return tokens

    def _update(self, plan: StepPlan, out: StepOutput) -> None:
        """Attribute the step's time, sample each sequence's next token, stream it, retire finished ones."""
        consumed = sum(n for _, n in plan.prefill) + len(plan.decode)
        for seq, n in plan.prefill:
            if id(seq) not in out.refilled:  # a recompute is the pool's choice: not charged to the request
                seq.gpu_seconds += out.seconds * n / consumed
        for seq in plan.decode:
            seq.gpu_seconds += out.seconds / consumed
        for seq in plan.speculate:
            seq.gpu_seconds += out.speculate_seconds.get(id(seq), 0.0)
        for seq, exc in out.failed:
            self._fail(seq, exc)

        produced: list[tuple[Sequence, int]] = []
        candidates = [(seq, out.greedy.get(id(seq)), out.decode_logits.get(id(seq))) for seq in plan.decode]
        candidates += [(seq, None, out.prefill_logits.get(id(seq))) for seq, _ in plan.prefill]
        candidates += [(fork, None, out.prefill_logits.get(id(fork))) for seq, _ in plan.prefill for fork in seq.forks]
        for seq, greedy, logits in candidates:
            try:
                if greedy is not None:
                    produced.append((seq, greedy))
                elif logits is not None:
                    produced.append((seq, self._sample(seq, logits)))
            except Exception as exc:  # a request's own sampling failure fails that request only
                self._fail(seq, exc)
        for seq in plan.speculate:
            produced.extend((seq, token) for token in out.speculated.get(id(seq), ()))
        for seq, token in produced:  # sampled first, so rows moving as others leave cannot mix them up
            if seq.finished:  # a speculative run that hit a stop drops the tokens after it
                continue
            try:
                self._advance(seq, token)
            except Exception as exc:
                self._fail(seq, exc)

    def _fail(self, seq: Sequence, exc: Exception) -> None:
        log.error("engine %s: sequence %s failed", self.name, seq.req.request_id, exc_info=exc)
        self._release(seq)
        seq.finished = True
        seq.emit(exc)
        for fork in seq.forks:  # choices still waiting for this one's prefill
            if fork.awaiting_fork and not fork.finished:
                self._fail(fork, exc)

    @staticmethod
    def _sample(seq: Sequence, logits: torch.Tensor) -> int:
        if seq.logits is not None:  # the logits seam: penalties, bias, grammar mask, logprobs
            return seq.logits.sample(logits)
        return sample_next(logits, seq.req.temperature, seq.req.top_p, seq.gen)

    def _advance(self, seq: Sequence, token: int) -> None:
        seq.output_ids.append(token)
        if seq.logits is not None:
            seq.logits.accept(token)  # advances the grammar's matcher, the penalties' counts
        finish = None
        if token in self.eos_ids or (seq.logits is not None and seq.logits.done):
            finish, delta = "stop", seq.text.flush()
        else:
            delta = seq.text.push(token)
            if seq.text.stopped:
                finish = "stop"
            elif seq.generated >= seq.max_new_tokens:
                # "length" unless a JSON answer closed on exactly the last token
                finish = "stop" if seq.logits is not None and seq.logits.complete else "length"
                delta += seq.text.flush()
        if finish is None:
            if delta and (chunk := seq.output.chunk(delta, None, len(seq.prompt_ids), seq.generated, seq.gpu_seconds)):
                seq.emit(chunk)
            return
        seq.finished = True
        if self._prefix is not None and seq.row is not None:
            # filed before the last chunk goes out: whoever sees the end can rely on the reuse
            self._prefix.insert(seq.kv_tokens(), self._batch.export(seq), seq.req.cache_salt)
        self._release(seq)
        seq.emit(seq.output.chunk(delta, finish, len(seq.prompt_ids), seq.generated, seq.gpu_seconds))
        seq.emit(DONE)

    def _admit(self, seq: Sequence) -> None:
        """Give an admitted sequence its KV row, starting from the longest cached prefix of its
        prompt, or refilling, of its KV's tokens (at least one token is always computed: a prompt's
        last logits give the first token)."""
        hit, kv, tokens = 0, None, seq.fill_ids
        if self._prefix is not None and seq.parent is None:  # later choices copy their first's KV instead
            hit, kv = self._prefix.lookup(tokens, limit=len(tokens) - 1, salt=seq.req.cache_salt)
        self._batch.admit(seq, kv, hit)
        if not seq.refilling:  # a refill's hits are no prompt caching the client sees
            seq.cached_tokens = hit
        self.prefix_hit_tokens += hit

    def _release(self, seq: Sequence) -> None:
        if seq.row is not None:
            self._batch.leave(seq)


def _average(mean: float, sample: float) -> float:
    return sample if not mean else (1 - _EMA) * mean + _EMA * sample


def _full_length(seq: Sequence) -> int:
    """The KV positions a sequence may reach: its prompt and every token it may generate."""
    return len(seq.prompt_ids) + seq.max_new_tokens


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids
