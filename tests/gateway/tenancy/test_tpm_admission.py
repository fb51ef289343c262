"""TPM admission counts tokens, not bytes (issue 19 item 10): a request reserves a typical
estimate, takes the rest when the model has counted its prompt, and is refused only when its
real count would not fit. A burst of concurrent requests never overshoots the limit. Through
a real server, the in-process pool, and each store (a real SQLite file, a real redis-server)."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from support import KEY_ALPHA, KEY_BETA, ServerThread
from tenancy_testkit import redis_prefix, tenancy_config

PROMPT = "Write a short poem about the sea, the wind and a small boat coming home at night."
MAX_TOKENS = 4
FITTING = 5  # requests the limit holds at their real count


def _ask(base_url, key):
    resp = httpx.post(base_url + "/v1/chat/completions", timeout=120, headers={"authorization": f"Bearer {key}"},
                      json={"model": "mux-2m", "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": MAX_TOKENS, "temperature": 0})
    return resp


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/muxgate.db"
    return f"{request.getfixturevalue('redis_url')}?prefix={redis_prefix()}"


def test_a_burst_against_a_tpm_limit_admits_what_fits_at_the_real_count_and_never_more(zoo_dir, store_url):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    # beta (no limit) measures what one request really costs: its prompt's tokens + max_tokens
    probe = tenancy_config(zoo_dir, store_url)
    cfg = parse_config(probe)
    with ServerThread(create_app(cfg, make_backend(cfg, use_ray=False))) as server:
        usage = _ask(server.base_url, KEY_BETA).json()["usage"]
    real = usage["prompt_tokens"] + MAX_TOKENS
    assert usage["completion_tokens"] == MAX_TOKENS  # every request below uses all it may
    assert len(PROMPT) < usage["prompt_tokens"] * 4  # the bytes the old bound counted: 4x and more over
    limit = FITTING * real + real // 2  # room for FITTING, not for one more

    config = tenancy_config(zoo_dir, store_url, teams=[{"id": "alpha", "tpm_limit": limit}])
    cfg = parse_config(config)
    with ServerThread(create_app(cfg, make_backend(cfg, use_ray=False))) as server:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: _ask(server.base_url, KEY_ALPHA), range(12)))
        elapsed = time.monotonic() - started
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429}, [a.text for a in answers if a.status_code not in (200, 429)]
    admitted = [a.json()["usage"] for a in answers if a.status_code == 200]
    used = sum(u["prompt_tokens"] + u["completion_tokens"] for u in admitted)
    refill = limit * elapsed / 60  # GCRA refills continuously while the burst runs
    assert used <= limit + refill  # overshoot 0
    assert len(admitted) >= FITTING  # refused only when the real count would not fit
    for refusal in (a for a in answers if a.status_code == 429):
        assert refusal.json()["error"]["code"] == "rate_limit_exceeded"
        assert refusal.headers["x-muxgate-limit"] == "team_tpm"
