"""A remote OpenAI-compatible upstream behind muxgate: streaming, usage and errors carry through."""

import asyncio

import pytest

from gateway.errors import BackendUnavailable
from gateway.upstream import RoutedBackends, UpstreamBackend
from loadtests.fake_upstream import app as fake_upstream
from support import ServerThread
from workers.types import GenerationRequest


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(fake_upstream) as server:
        yield server


def collect(backend, **kw):
    async def go():
        try:
            return [c async for c in backend.generate("remote", GenerationRequest("r", **kw))]
        finally:
            await backend.close()
    return asyncio.run(go())


def test_upstream_stream_becomes_chunks_with_exact_usage(upstream):
    backend = UpstreamBackend("remote", upstream.base_url + "/v1", "fake")
    chunks = collect(backend, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "".join(c.text for c in chunks) == "Hello from the fake"
    assert chunks[-1].finish_reason == "stop"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (12, 4)


def test_text_completions_go_to_the_completions_endpoint(upstream):
    chunks = collect(UpstreamBackend("remote", upstream.base_url + "/v1", "fake"), prompt="x", max_tokens=2)
    assert "".join(c.text for c in chunks) == "Hello from"


def test_unreachable_upstream_is_503_retryable():
    backend = UpstreamBackend("remote", "http://127.0.0.1:9/v1", "fake", timeout_s=2)
    with pytest.raises(BackendUnavailable):
        collect(backend, prompt="x")


def test_routed_backends_send_each_model_to_its_backend(upstream):
    remote = UpstreamBackend("remote", upstream.base_url + "/v1", "fake")
    routed = RoutedBackends(None, {"remote": remote})
    chunks = collect(routed, prompt="x", max_tokens=1)
    assert chunks[-1].completion_tokens == 1
    assert [m.name for m in asyncio.run(RoutedBackends(None, {"remote": UpstreamBackend(
        "remote", upstream.base_url + "/v1", "fake")}).models())] == ["remote"]
