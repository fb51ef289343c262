"""One request's stream as its consumer reads it: its sequences and the queue their engine emits into.

The stream outlives the engine that created it: when a paused model's sequences are preempted
(workers/engine.py `Engine.preempt`), their scheduler emits PREEMPTED, the consumer raises
`Preempted` carrying the stream, and the pool puts it into the model's next engine
(`Engine.resume`), which emits into the same queue: the client's stream goes on where it stopped,
no chunk lost or repeated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

from workers.types import GenerationChunk

if TYPE_CHECKING:  # the pool imports this module, and imports no torch until a model loads
    from workers.sequence import Sequence

DONE = object()  # a choice finished (its last chunk came before)
PREEMPTED = object()  # the request's sequences left the engine's batch, their KV released


@dataclass
class SequenceStream:
    first: Sequence  # the request's first choice; the others are its forks
    seqs: list[Sequence]  # every choice
    queue: asyncio.Queue  # what the scheduler emits, through each sequence's `emit`
    done: int = 0  # choices finished
    handed_off: bool = False  # preempted: an engine serves its sequences on, so closing must not cancel them

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The chunks until every choice has finished. Raises `Preempted` when the engine took the
        sequences out; closing it early (client gone) cancels them."""
        self.handed_off = False
        try:
            while self.done < len(self.seqs):
                item = await self.queue.get()
                if item is DONE:
                    self.done += 1
                elif item is PREEMPTED:
                    self.handed_off = True
                    raise Preempted(self)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            if not self.handed_off:
                self.cancel()

    def cancel(self) -> None:
        """Nobody wants it any more: an engine holding its sequences drops them at its next step."""
        for seq in self.seqs:
            seq.cancelled = True


class Preempted(Exception):
    """A request's sequences were taken out of its model's engine (the model is paused for another
    model's load): `Engine.resume(this)` on an engine of the same model serves the stream on."""

    def __init__(self, stream: SequenceStream):
        super().__init__(f"request {stream.first.req.request_id} was preempted")
        self.stream = stream
