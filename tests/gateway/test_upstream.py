"""A remote OpenAI-compatible upstream behind muxgate: streaming, usage and errors carry through."""

import asyncio

import pytest

from gateway.http.errors import BackendUnavailable
from gateway.upstreams.remote import RoutedBackends, UpstreamBackend
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


def test_an_upstream_model_is_served_through_the_gateway(upstream, zoo_dir, start_server):
    import openai

    from support import KEY_ALPHA, make_config

    config = make_config(zoo_dir)
    config["models"] = config["models"] + [{"name": "remote", "upstream": {"base_url": upstream.base_url + "/v1",
                                                                            "model": "fake"}}]
    server = start_server(config)
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0)
    out = client.chat.completions.create(model="remote", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert out.choices[0].message.content == "Hello from the"
    assert out.usage.completion_tokens == 3 and out.usage.prompt_tokens == 12
    chunks = list(client.chat.completions.create(model="remote", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 2
    assert "remote" in {m.id for m in client.models.list()}


def test_openapi_document_is_published(gateway):
    import httpx

    doc = httpx.get(gateway.base_url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/chat/completions" in doc["paths"]
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]


class _Pieces:
    """Stands in for an upstream response whose body arrives in the given network reads."""

    def __init__(self, *pieces: bytes):
        self._pieces = pieces

    async def iter_any(self):
        for piece in self._pieces:
            yield piece


def _events(*pieces: bytes) -> list:
    from gateway.upstreams.remote import _sse_events

    async def go():
        out = []
        try:
            async for batch in _sse_events(_Pieces(*pieces)):
                out.append(batch)
        except ValueError as exc:
            out.append(type(exc).__name__)
        return out

    return asyncio.run(go())


def test_sse_events_arrive_in_batches_per_read_and_stop_at_done():
    # a line split across reads waits for its end; events after [DONE] are never read
    assert _events(b'data: {"a": 1}\n\ndata: {"b"', b': 2}\n\n: comment\ndata: [DONE]\n\ndata: {"c": 3}\n\n') == \
        [[{"a": 1}], [{"b": 2}]]
    assert _events(b'data: {"a": 1}\n\ndata: {"b": 2}') == [[{"a": 1}], [{"b": 2}]]  # no final newline


def test_sse_events_before_a_bad_line_still_arrive_before_the_error():
    assert _events(b'data: {"a": 1}\n\ndata: {not json\n\n') == [[{"a": 1}], "JSONDecodeError"]


def _chunks(*pieces: bytes, estimate: int) -> list:
    from gateway.upstreams.remote import _parse_stream

    async def go():
        return [c async for c in _parse_stream(_Pieces(*pieces), estimate)]

    return asyncio.run(go())


def test_a_stream_without_usage_is_charged_its_prompt_estimate_not_nothing():
    # an upstream that ignores stream_options.include_usage (or a stream cut before its usage
    # event): the prompt still counts, as the estimate; the completion as the text events seen
    chunks = _chunks(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
                     b'data: {"choices": [{"delta": {"content": " there"}, "finish_reason": "stop"}]}\n\n'
                     b"data: [DONE]\n\n", estimate=11)
    assert [c.text for c in chunks] == ["Hi there", ""]  # events that arrived together: one chunk
    assert (chunks[0].prompt_tokens, chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (11, 11, 2)
    assert chunks[-1].finish_reason == "stop"


def test_the_upstreams_usage_replaces_the_estimate():
    chunks = _chunks(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n',
                     b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}\n\n'
                     b"data: [DONE]\n\n", estimate=11)
    assert chunks[0].prompt_tokens == 11  # what a request abandoned here would be charged
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (5, 1)


def test_prompt_estimate_counts_about_four_bytes_a_token_plus_the_template():
    from gateway.tenancy.estimate import prompt_token_bound, prompt_token_estimate

    chat = GenerationRequest("r", messages=[{"role": "system", "content": "x" * 40},
                                            {"role": "user", "content": "y" * 80}])
    assert prompt_token_estimate(chat) == 3 + (10 + 3) + (20 + 3)
    assert prompt_token_estimate(GenerationRequest("r", prompt="z" * 9)) == 3  # rounded up
    assert prompt_token_estimate(chat) < prompt_token_bound(chat)  # the bound stays for admission


def test_choices_keep_their_index_and_the_usage_total_is_split_over_them():
    # two choices interleaved, the second finishing without content; usage is one total
    chunks = _chunks(b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
                     b'data: {"choices": [{"index": 0, "delta": {"content": "b"}}]}\n\n'
                     b'data: {"choices": [{"index": 2, "delta": {"tool_calls": [{"index": 0, "id": "c1", '
                     b'"type": "function", "function": {"name": "f", "arguments": ""}}]}}]}\n\n'
                     b'data: {"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]}\n\n'
                     b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}, '
                     b'{"index": 2, "delta": {}, "finish_reason": "tool_calls"}]}\n\n'
                     b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}\n\n'
                     b"data: [DONE]\n\n", estimate=3)
    content = [c for c in chunks if c.finish_reason is None]
    assert [(c.index, c.text) for c in content] == [(0, "ab"), (2, "")]  # a choice's text merges; a call does not
    assert content[1].tool_calls[0]["id"] == "c1"
    finals = [c for c in chunks if c.finish_reason is not None]
    assert [(c.index, c.finish_reason) for c in finals] == [(0, "length"), (1, "stop"), (2, "tool_calls")]
    assert sum(c.completion_tokens for c in finals) == 9 and {c.prompt_tokens for c in finals} == {5}


def test_an_upstream_429_with_an_http_date_is_a_429_with_its_delay():
    from gateway.http.errors import RateLimited
    from gateway.upstreams.remote import _upstream_error, retry_after_seconds

    err = _upstream_error("remote", 429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"{}")
    assert isinstance(err, RateLimited) and err.retry_after == 0.0  # a date in the past: now
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("soon") == 1.0 and retry_after_seconds(None) == 1.0


async def _rate_limited_upstream(scope, receive, send):
    """An upstream that answers every call 429 with an HTTP-date Retry-After."""
    if scope["type"] == "lifespan":
        from loadtests.fake_upstream import lifespan

        return await lifespan(receive, send)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"Wed, 21 Oct 2099 07:28:00 GMT")]})
    await send({"type": "http.response.body", "body": b'{"error": {"message": "slow down"}}'})


def test_an_upstream_429_falls_back_along_the_policy_and_otherwise_says_when(zoo_dir, start_server, tmp_path):
    """It used to become a 502 (the date did not parse) and was never tried on a fallback."""
    import httpx
    import yaml

    from support import KEY_ALPHA, make_config

    with ServerThread(_rate_limited_upstream) as limited:
        remote = {"name": "remote", "upstream": {"base_url": limited.base_url + "/v1", "model": "x"}}
        policy = tmp_path / "routing.yaml"
        policy.write_text(yaml.safe_dump({"version": 1, "tiers": {"small": ["mux-2m"], "large": ["remote"]},
                                          "routes": {"default": {"threshold": 0.0}}}))
        config = make_config(zoo_dir)
        config["models"] = config["models"] + [remote]
        config["routing"] = {"default_model": "mux-2m", "policy_file": str(policy)}
        server = start_server(config)

        def ask(model):
            return httpx.post(server.base_url + "/v1/chat/completions", timeout=60,
                              headers={"authorization": f"Bearer {KEY_ALPHA}"},
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        routed = ask("auto")
        assert routed.status_code == 200, routed.text
        assert routed.headers["x-muxgate-model"] == "mux-2m"
        assert routed.headers["x-muxgate-route-reason"].endswith("+fallback")
        direct = ask("remote")  # no fallback for an explicit model: the upstream's 429, with its delay
        assert direct.status_code == 429 and int(direct.headers["retry-after"]) > 3600
