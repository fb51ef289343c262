"""Nothing is shared between teams unless the team is part of its key: agent sessions and the
pool's prefix KV cache are scoped to the team that made the request."""

import openai

from gateway.http.completions import team_session
from support import KEY_ALPHA, KEY_BETA

PROMPT = "Summarise the quarterly report for the board in three short bullet points, please. " * 3


def _ask(gateway, key, session=None):
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0, timeout=60)
    headers = {"x-session-id": session} if session else None
    client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": PROMPT}], max_tokens=2,
                                   temperature=0, extra_headers=headers)


def _prefix_hits(gateway) -> int:
    return gateway.backend.default.pool.stats()["prefix_hit_tokens"].get("mux-2m", 0)


def test_one_teams_cached_prompt_is_never_reused_by_another_team(gateway):
    _ask(gateway, KEY_ALPHA)
    before = _prefix_hits(gateway)
    _ask(gateway, KEY_BETA)  # the same prompt from another team: computed afresh
    assert _prefix_hits(gateway) == before
    _ask(gateway, KEY_ALPHA)  # the same team: reused
    assert _prefix_hits(gateway) > before


def test_session_ids_live_in_their_teams_space(gateway):
    seen = []
    inner = gateway.backend.generate

    def spy(model, req):
        seen.append((req.session_id, req.cache_salt))
        return inner(model, req)

    gateway.app.state.gateway.completions.backend.generate = spy
    try:
        _ask(gateway, KEY_ALPHA, session="agent-7")
        _ask(gateway, KEY_BETA, session="agent-7")
    finally:
        del gateway.app.state.gateway.completions.backend.generate
    assert seen == [("alpha/agent-7", "alpha"), ("beta/agent-7", "beta")]
    assert team_session("alpha", None) is None and team_session("alpha", "") is None
