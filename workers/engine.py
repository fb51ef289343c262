"""One resident model: a scheduler thread that steps every running sequence, streaming tokens.

The step reads as three verbs: schedule (admit waiting sequences, drop cancelled ones), run the
model (one forward per sequence: its prompt on the first step, its last token after), update
(sample, detokenize, check stop conditions, emit). Each sequence owns its KV cache, sampling
generator and text stream, so interleaving never changes what a sequence produces.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import torch

from workers.detok import StopTextStream
from workers.sampling import make_generator, sample_next
from workers.types import ContextLengthExceeded, GenerationChunk, GenerationRequest

log = logging.getLogger(__name__)
_DONE = object()


@dataclass
class Sequence:
    req: GenerationRequest
    prompt_ids: list[int]
    max_new_tokens: int
    text: StopTextStream
    gen: torch.Generator
    emit: Callable[[object], None]
    pending: list[int] = field(default_factory=list)  # ids the next forward consumes
    cache: object = None
    generated: int = 0
    gpu_seconds: float = 0.0
    cancelled: bool = False
    finished: bool = False


class Engine:
    """Generation for one loaded model. Thread-safe `generate`; one scheduler thread."""

    def __init__(self, name: str, model, tokenizer, device: str = "cpu", max_running: int = 64):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_running = max_running
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = _eos_ids(model, tokenizer)
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self.busy_seconds = 0.0  # time spent in forward passes, for GPU-second attribution
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, name: str, path: str, device: str = "cpu", dtype: str | None = None, **kw) -> "Engine":
        """Load a Hugging Face checkpoint directory (the zoo's or a real one)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(path)
        torch_dtype = getattr(torch, dtype) if dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        return cls(name, model, tokenizer, device=device, **kw)

    # ---- request side (any thread / event loop) -------------------------------------------

    @property
    def in_flight(self) -> int:
        """Sequences still wanted by someone (cancelled ones leave at the next step)."""
        with self._wake:
            return sum(1 for s in (*self._waiting, *self._running) if not (s.cancelled or s.finished))

    def encode(self, req: GenerationRequest) -> list[int]:
        """Prompt token ids: the chat template for messages, the raw text for a prompt."""
        if req.messages is not None:
            text = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        else:
            text = req.prompt
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def budget(self, prompt_ids: list[int], req: GenerationRequest) -> int:
        """How many tokens may be generated; refuses what the context cannot hold."""
        room = self.context_length - len(prompt_ids)
        if room <= 0 or (req.max_tokens is not None and req.max_tokens > room):
            asked = len(prompt_ids) + (req.max_tokens or 0)
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. However, you "
                f"requested {asked} tokens ({len(prompt_ids)} in the prompt, {req.max_tokens or 0} in the "
                "completion). Please reduce the prompt or max_tokens.",
                context_length=self.context_length,
                prompt_tokens=len(prompt_ids),
            )
        return room if req.max_tokens is None else req.max_tokens

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the answer; the last chunk carries finish_reason and exact token counts.
        Closing the iterator early (client gone) frees the sequence's slot at the next step."""
        prompt_ids = self.encode(req)
        max_new = self.budget(prompt_ids, req)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone
                seq.cancelled = True

        seq = Sequence(req, prompt_ids, max_new, StopTextStream(self.tokenizer, req.stop), make_generator(req.seed), emit)
        seq.pending = list(prompt_ids)
        if max_new == 0:
            yield GenerationChunk("", "length", len(prompt_ids), 0)
            return
        with self._wake:
            self._waiting.append(seq)
            self._wake.notify()
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.cancelled = True

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    # ---- scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._schedule()
            if batch is None:
                return
            for seq in batch:
                try:
                    logits = self._run(seq)
                    self._update(seq, logits)
                except Exception as exc:  # one bad sequence must not take the others down
                    log.exception("engine %s: sequence %s failed", self.name, seq.req.request_id)
                    seq.finished = True
                    seq.emit(exc)

    def _schedule(self) -> list[Sequence] | None:
        with self._wake:
            while True:
                self._running = [s for s in self._running if not (s.finished or s.cancelled)]
                while self._waiting and len(self._running) < self.max_running:
                    seq = self._waiting.popleft()
                    if not seq.cancelled:
                        self._running.append(seq)
                if self._closed:
                    return None
                if self._running:
                    return list(self._running)
                self._wake.wait()

    @torch.inference_mode()
    def _run(self, seq: Sequence) -> torch.Tensor:
        started = time.perf_counter()
        ids = torch.tensor([seq.pending], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=seq.cache, use_cache=True)
        seq.cache = out.cache
        logits = out.logits[0, -1]
        elapsed = time.perf_counter() - started
        self.busy_seconds += elapsed
        seq.gpu_seconds += elapsed  # one sequence per forward: all of it is this sequence's
        return logits

    def _update(self, seq: Sequence, logits: torch.Tensor) -> None:
        token = sample_next(logits, seq.req.temperature, seq.req.top_p, seq.gen)
        seq.generated += 1
        seq.pending = [token]
        finish = None
        if token in self.eos_ids:
            finish, delta = "stop", seq.text.flush()
        else:
            delta = seq.text.push(token)
            if seq.text.stopped:
                finish = "stop"
            elif seq.generated >= seq.max_new_tokens:
                finish, delta = "length", delta + seq.text.flush()
        if finish is None:
            if delta:
                seq.emit(GenerationChunk(delta, None, len(seq.prompt_ids), seq.generated, gpu_seconds=seq.gpu_seconds))
            return
        seq.finished = True
        seq.cache = None
        seq.emit(GenerationChunk(delta, finish, len(seq.prompt_ids), seq.generated, gpu_seconds=seq.gpu_seconds))
        seq.emit(_DONE)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids

