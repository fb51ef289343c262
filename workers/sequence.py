"""One generation as the engine's scheduler sees it: where it is, what it owns, how it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from workers.choice_output import ChoiceOutput
from workers.detok import StopTextStream
from workers.types import GenerationRequest

if TYPE_CHECKING:
    from workers.logits import RowLogits
    from workers.speculative import DraftState


@dataclass
class Sequence:
    """A request's state. Changed only by the engine's scheduler thread (except `cancelled`).

    Life: waiting -> admitted with a `row` in the KV cache -> prefilling (`prefilled` prompt tokens
    have KV) -> decoding (once its first token is sampled) -> finished (row released). Its sampling
    generator and text stream are its own, so what it produces does not depend on what else runs.
    Preempted (taken out of a paused model's batch, its row released): it keeps everything but its
    KV, and once put into an engine again it is `refilling` (its `kv_tokens()` re-prefilled, nothing
    sampled) and then decodes from its last sampled token as if never interrupted.
    """

    req: GenerationRequest
    prompt_ids: list[int]
    max_new_tokens: int
    text: StopTextStream
    gen: torch.Generator
    emit: Callable[[object], None]
    output_ids: list[int] = field(default_factory=list)
    row: int | None = None  # its row in the KV cache while admitted
    prefilled: int = 0  # prompt tokens whose KV exists (reused or computed)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    gpu_seconds: float = 0.0
    draft: DraftState | None = None  # speculative decoding (greedy sequences on a route with a draft)
    logits: RowLogits | None = None  # its logits processors (workers/logits.py); None: plain sampling
    output: ChoiceOutput = field(default_factory=ChoiceOutput)  # text -> chunks (tool calls, logprobs)
    # n > 1: the first choice prefills the prompt once; the others (`forks`) get a copy of its KV
    # row when that prefill completes and sample from the same logits (each its own generator)
    parent: Sequence | None = None
    forks: list[Sequence] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    bypassed: int = 0  # later requests admitted while it waited for KV room (bounded: the engine's max_bypass)
    entered: float = 0.0  # monotonic seconds when it was submitted to (or resumed in) its engine
    refilling: bool = False  # preempted after sampling: its KV is recomputed before it decodes again

    @property
    def generated(self) -> int:
        return len(self.output_ids)

    @property
    def decoding(self) -> bool:
        return bool(self.output_ids) and not self.refilling

    @property
    def awaiting_fork(self) -> bool:
        """A later choice whose prompt KV has not been copied from its first choice yet."""
        return self.parent is not None and self.prefilled < len(self.prompt_ids)

    @property
    def fill_ids(self) -> list[int]:
        """What its prefill feeds: the prompt, or when refilling every token its KV held."""
        return self.kv_tokens() if self.refilling else self.prompt_ids

    @property
    def prompt_left(self) -> int:
        return len(self.fill_ids) - self.prefilled

    def taken_out(self) -> None:
        """Preempted: its row is gone (released by the engine); what it sampled, its generator,
        text stream and logits state stay. Its draft is dropped: it decodes without one after."""
        self.prefilled = 0
        self.bypassed = 0
        self.refilling = bool(self.output_ids)
        self.draft = None

    def kv_tokens(self) -> list[int]:
        """The tokens its KV covers: the prompt and every sampled token but the last (never fed)."""
        return self.prompt_ids + self.output_ids[:-1]
