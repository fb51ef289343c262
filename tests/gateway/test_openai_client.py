"""The official openai client against a real uvicorn server: what a user sees first."""

import httpx
import pytest

from support import ADMIN_KEY, KEY_ALPHA, TEST_MODELS


def test_chat_auto_returns_text_and_usage(openai_client):
    resp = openai_client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say something."}], max_tokens=8, temperature=0)
    completion = resp.parse()
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == 8 or completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.model == "mux-2m"  # the default route
    assert resp.headers["x-muxgate-model"] == "mux-2m"
    assert resp.headers["x-muxgate-route-reason"] == "default_route"
    assert "x-muxgate-route-score" in resp.headers
    assert resp.headers["x-request-id"]


def test_chat_stream_yields_chunks_then_usage(openai_client):
    stream = openai_client.chat.completions.create(
        model="mux-5m", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 3
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens > 0


def test_stream_text_equals_non_stream_text_with_seed(openai_client):
    args = dict(model="mux-5m", messages=[{"role": "user", "content": "Hello"}], max_tokens=10, seed=7,
                temperature=0.9)
    full = openai_client.chat.completions.create(**args).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(
        stream=True, **args) if c.choices)
    assert streamed == full


def test_seed_makes_sampling_repeatable_and_temperature_zero_is_greedy(openai_client):
    def ask(**kw):
        return openai_client.completions.create(model="mux-2m", prompt="Once upon", max_tokens=12, **kw).choices[0].text
    assert ask(seed=1, temperature=1.0) == ask(seed=1, temperature=1.0)
    assert ask(seed=1, temperature=1.0) != ask(seed=2, temperature=1.0)
    assert ask(temperature=0) == ask(temperature=0, seed=99)


def test_stop_sequence_ends_with_stop_and_is_not_returned(openai_client):
    base = openai_client.completions.create(model="mux-2m", prompt="Once upon", max_tokens=12, temperature=0)
    text = base.choices[0].text
    stop = text[4:7]
    assert len(stop) == 3
    cut = openai_client.completions.create(model="mux-2m", prompt="Once upon", max_tokens=12, temperature=0,
                                          stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    assert stop not in cut.choices[0].text


def test_completions_endpoint_streams(openai_client):
    chunks = list(openai_client.completions.create(model="mux-2m", prompt="abc", max_tokens=5, stream=True,
                                                            temperature=0))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_models_list_shows_the_zoo_and_auto(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert ids[0] == "auto"
    assert set(TEST_MODELS) <= set(ids)


def test_health_and_metrics(gateway, openai_client):
    openai_client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert httpx.get(gateway.base_url + "/healthz").json()["status"] == "ok"
    assert httpx.get(gateway.base_url + "/metrics").status_code == 401  # every team's spend is in there
    team = httpx.get(gateway.base_url + "/metrics", headers={"authorization": f"Bearer {KEY_ALPHA}"})
    assert team.status_code == 403
    text = httpx.get(gateway.base_url + "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'muxgate_requests_total{endpoint="chat",model="mux-2m",route="explicit",status="ok"}' in text
    assert "muxgate_ttft_seconds_bucket" in text
    assert 'muxgate_tokens_total{kind="completion",model="mux-2m"}' in text


@pytest.mark.parametrize("content", [[{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]])
def test_content_parts_are_accepted(openai_client, content):
    out = openai_client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": content}],
                                                max_tokens=3)
    assert out.usage.completion_tokens == 3


def test_second_team_key_works(gateway):
    import openai

    from support import KEY_BETA

    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY_BETA, max_retries=0)
    assert client.completions.create(model="mux-2m", prompt="x", max_tokens=1).usage.completion_tokens == 1
    assert KEY_ALPHA != KEY_BETA


def test_public_metrics_serves_them_without_a_key_where_the_operator_says_so(zoo_dir, start_server):
    from support import make_config

    server = start_server(make_config(zoo_dir, server={"public_metrics": True}))
    assert httpx.get(server.base_url + "/metrics").status_code == 200
