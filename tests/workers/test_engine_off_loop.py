"""A replica's event loop keeps serving while a large prompt is templated and tokenised: the
1 MiB body of tiny messages the gateway accepts takes a chat template seconds to render, and on
the loop it stalled every stream the replica serves (issue 19 item 5)."""

import asyncio
import threading

import pytest

from workers.types import GenerationRequest


@pytest.fixture
def engine(engine_2m):
    return engine_2m


class WaitsForTheLoop:
    """A tokenizer that, before encoding, waits until the event loop has run a callback: encoded
    on the loop itself it can never see one (it reports that after a deadlock guard)."""

    def __init__(self, inner, loop_ran: threading.Event):
        self.inner = inner
        self.loop_ran = loop_ran
        self.saw_the_loop_run: bool | None = None

    def __call__(self, text, **kw):
        self.saw_the_loop_run = self.loop_ran.wait(timeout=10)
        return self.inner(text, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_prompt_of_many_tiny_messages_is_encoded_off_the_event_loop(engine):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(200)]
    req = GenerationRequest("many", messages=messages, max_tokens=1, temperature=0)
    loop_ran = threading.Event()
    spy = WaitsForTheLoop(engine.tokenizer, loop_ran)

    async def go():
        asyncio.get_running_loop().call_later(0.05, loop_ran.set)  # runs only if the loop is free
        return [c async for c in engine.generate(req)]

    engine.tokenizer = spy
    try:
        chunks = asyncio.run(go())
    finally:
        engine.tokenizer = spy.inner
    assert spy.saw_the_loop_run is True
    assert chunks[-1].prompt_tokens == len(engine.encode(req))


def test_a_short_prompt_gives_the_same_tokens_either_way(engine):
    req = GenerationRequest("short", messages=[{"role": "user", "content": "hello"}], max_tokens=1, temperature=0)

    async def go():
        return [c async for c in engine.generate(req)]

    assert asyncio.run(go())[-1].prompt_tokens == len(engine.encode(req))
