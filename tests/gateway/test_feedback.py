"""POST /v1/feedback and what the gateway records of `auto` requests, through a real uvicorn server
and the official openai client: the score labels the tier that answered, only the requesting team
may give it (another team's id is a 404 like an unknown one), bad bodies are 400s naming the
field, a key without the scope is a 403; features are stored for every team, text only for teams
with store_prompts."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from learning_testkit import SECRET_PROMPT, ask, feedback, learning_config, stored, wait_routed

from support import ADMIN_KEY, KEY_ALPHA, KEY_BETA


@pytest.fixture
def server_and_config(tmp_path, zoo_dir, start_server):
    config = learning_config(tmp_path, zoo_dir)
    return start_server(config), config


def test_feedback_labels_the_tier_that_answered_and_a_second_score_replaces_the_first(server_and_config):
    server, config = server_and_config
    answer = ask(server, KEY_ALPHA)
    assert answer.model == "mux-2m"
    first = feedback(server, KEY_ALPHA, {"request_id": answer.id, "score": "up"})
    assert first.status_code == 200, first.text
    assert first.json() == {"object": "feedback", "request_id": answer.id.removeprefix("chatcmpl-"), "score": 1.0,
                            "tier": "small", "model": "mux-2m"}
    rid = answer.id.removeprefix("chatcmpl-")
    assert feedback(server, KEY_ALPHA, {"request_id": rid, "score": 0.25}).status_code == 200  # bare id too
    rows = stored(config, lambda s: s.outcomes(0, 2**32))
    assert [(o.request_id, o.source, o.routed, o.small_score, o.large_score) for o in rows] == \
        [(rid, "feedback", "small", 0.25, None)]
    assert rows[0].team == "alpha" and rows[0].pair == "mux-2m->mux-5m"
    metrics = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert "muxgate_feedback_total 2.0" in metrics and 'muxgate_routed_requests_total{outcome="recorded"} 1.0' in metrics


def test_only_the_requesting_team_may_score_and_ids_cannot_be_probed(server_and_config):
    server, config = server_and_config
    answer = ask(server, KEY_ALPHA)
    wait_routed(config, "alpha", answer.id.removeprefix("chatcmpl-"))
    other = feedback(server, KEY_BETA, {"request_id": answer.id, "score": 1})
    unknown = feedback(server, KEY_BETA, {"request_id": "chatcmpl-0123456789abcdef01234567", "score": 1})
    for response in (other, unknown):
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "request_id")
    assert stored(config, lambda s: s.outcomes(0, 2**32)) == []


@pytest.mark.parametrize("body,param", [
    ({"request_id": "abc", "score": 1.5}, "score"),
    ({"request_id": "abc", "score": "maybe"}, "score"),
    ({"request_id": "abc", "score": None}, "score"),
    ({"request_id": "abc"}, "score"),
    ({"score": 1}, "request_id"),
    ({"request_id": "has spaces", "score": 1}, "request_id"),
    ({"request_id": "abc", "score": 1, "comment": "nice"}, "comment"),
])
def test_bad_bodies_are_400s_naming_the_field(server_and_config, body, param):
    server, _ = server_and_config
    response = feedback(server, KEY_ALPHA, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_bodies_that_are_not_json_objects_are_400s(server_and_config):
    server, _ = server_and_config
    for body in ("not json", "[1, 2]"):
        response = feedback(server, KEY_ALPHA, body)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_keys_without_the_scope_the_admin_key_and_no_key_are_refused(server_and_config):
    server, _ = server_and_config
    created = httpx.post(server.base_url + "/v1/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         json={"team": "alpha", "name": "reader", "scopes": ["reports"]}, timeout=30)
    assert created.status_code in (200, 201), created.text
    body = {"request_id": "abc", "score": 1}
    assert feedback(server, created.json()["secret"], body).status_code == 403
    assert feedback(server, ADMIN_KEY, body).status_code == 403
    assert feedback(server, None, body).status_code == 401


def test_features_are_stored_for_every_team_and_text_only_with_store_prompts(server_and_config):
    server, config = server_and_config
    alpha = ask(server, KEY_ALPHA, f"alpha says {SECRET_PROMPT}")
    beta = ask(server, KEY_BETA, "beta asks about lemurs")
    plain = wait_routed(config, "alpha", alpha.id.removeprefix("chatcmpl-"))
    kept = wait_routed(config, "beta", beta.id.removeprefix("chatcmpl-"))
    from policies.outcome import decode_features

    assert len(decode_features(plain.features).dense) > 0
    assert (plain.messages, plain.answer) == (None, None)
    assert kept.messages == [{"role": "user", "content": "beta asks about lemurs"}]
    assert kept.answer == beta.choices[0].message.content
    db = Path(config["store"]["url"].removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert SECRET_PROMPT.encode() not in raw and b"lemurs" in raw


def test_streamed_answers_are_kept_for_teams_that_store_prompts(server_and_config):
    server, config = server_and_config
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_BETA, max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "stream"}],
                                                 max_tokens=4, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert wait_routed(config, "beta", chunks[0].id.removeprefix("chatcmpl-")).answer == text


def test_explicit_models_are_not_recorded_and_cannot_be_scored(server_and_config):
    server, config = server_and_config
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)
    answer = client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert feedback(server, KEY_ALPHA, {"request_id": answer.id, "score": 1}).status_code == 404


def test_feedback_and_records_on_a_shared_redis_store(tmp_path, zoo_dir, start_server, redis_url):
    import uuid

    config = learning_config(tmp_path, zoo_dir)
    config["store"] = {"url": f"{redis_url}?prefix=mgtest:{uuid.uuid4().hex[:10]}:", "journal_dir": None}
    server = start_server(config)
    answer = ask(server, KEY_BETA, "beta asks about lemurs")
    assert feedback(server, KEY_BETA, {"request_id": answer.id, "score": 0.5}).status_code == 200
    assert feedback(server, KEY_ALPHA, {"request_id": answer.id, "score": 0.5}).status_code == 404
    kept = wait_routed(config, "beta", answer.id.removeprefix("chatcmpl-"))
    assert kept.messages == [{"role": "user", "content": "beta asks about lemurs"}]
    rows = stored(config, lambda s: s.outcomes(0, 2**32, team_id="beta"))
    assert [(o.source, o.routed, o.small_score) for o in rows] == [("feedback", "small", 0.5)]
