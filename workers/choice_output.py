"""How one choice's text becomes GenerationChunks: content, tool-call deltas, logprobs, finish.

The engine hands it each text delta (already safe: whole characters, no stop string) and, at the
end, the finish reason; it returns the chunk to send, or None when there is nothing to show yet
(text held back as a possible call marker; logprobs wait for the next chunk that goes out, so
every sampled token's entry is sent exactly once).
"""

from __future__ import annotations

from workers.logits import RowLogits
from workers.tool_stream import ToolCallStream
from workers.types import GenerationChunk


class ChoiceOutput:
    def __init__(self, index: int = 0, tools: ToolCallStream | None = None, constrained: str | None = None,
                 logits: RowLogits | None = None):
        self.index = index
        self.tools = tools
        self.constrained = constrained
        self.logits = logits

    def chunk(self, delta: str, finish: str | None, prompt_tokens: int, generated: int,
              gpu_seconds: float) -> GenerationChunk | None:
        text, calls = delta, []
        if self.tools is not None:
            text, calls = self.tools.feed(delta)
            if finish is not None:
                more_text, more_calls = self.tools.close()
                text, calls = text + more_text, calls + more_calls
            if finish == "stop" and self.tools.calls:
                finish = "tool_calls"
        if finish is None and not text and not calls:
            return None
        logprobs = self.logits.take_logprobs() if self.logits is not None else None
        return GenerationChunk(text, finish, prompt_tokens, generated, index=self.index, tool_calls=calls or None,
                               logprobs=logprobs, constrained=self.constrained, gpu_seconds=gpu_seconds)
