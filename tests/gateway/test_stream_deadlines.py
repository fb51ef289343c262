"""A stream that stops sending mid-answer fails after `server.stream_idle_timeout_s` (issue 19
item 11): the client hears why (an in-band error when streamed, 503 when not), the backend's
stream is closed (its slot freed) and the request is settled. And reservations of requests
still running are renewed, so a generation longer than their ttl keeps what it holds."""

import asyncio
import json
import time

import httpx
import pytest

from support import KEY_ALPHA, ServerThread, WrappedBackend, make_config, wait_until
from workers.types import GenerationChunk


class StallsAfterOneToken(WrappedBackend):
    def __init__(self, inner):
        super().__init__(inner)
        self.closed = 0

    async def generate(self, model, req):
        try:
            yield GenerationChunk("Hel", prompt_tokens=3, completion_tokens=1)
            await asyncio.sleep(3600)
        finally:
            self.closed += 1


@pytest.fixture(scope="module")
def stalling_gateway(zoo_dir):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    config = make_config(zoo_dir)
    config["server"] = {**config["server"], "stream_idle_timeout_s": 0.5}
    cfg = parse_config(config)
    backend = StallsAfterOneToken(make_backend(cfg, use_ray=False))
    with ServerThread(create_app(cfg, backend)) as server:
        server.backend = backend
        yield server


def test_a_stream_silent_mid_answer_fails_in_band_and_is_closed_and_settled(stalling_gateway):
    gw = stalling_gateway.app.state.gateway
    before = stalling_gateway.backend.closed
    body = {"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", stalling_gateway.base_url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {KEY_ALPHA}"}) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"].get("content") in (None, "", "Hel")
    error = json.loads(events[-1])["error"]
    assert "sent nothing for 0.5s" in error["message"]
    wait_until(lambda: stalling_gateway.backend.closed == before + 1, timeout_s=10.0, every_s=0.02, what="the stream to be closed")
    wait_until(lambda: not gw.tenancy.admission._running, timeout_s=10.0, every_s=0.02, what="settlement")  # nothing still held


def test_a_whole_answer_that_stalls_is_a_503(stalling_gateway):
    resp = httpx.post(stalling_gateway.base_url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {KEY_ALPHA}"},
                      json={"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 503, resp.text
    assert "sent nothing" in resp.json()["error"]["message"]


def test_running_requests_reservations_are_renewed(zoo_dir, tmp_path):
    """A request admitted with a budget, still running when its reservation would expire: the
    renewal keeps its hold, so a second request that only fits if it expired is refused."""
    from gateway.tenancy.admission import StoreAdmission
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    config = make_config(zoo_dir, teams=[{"id": "alpha", "budget_usd": 1.0}],
                         store={"url": f"sqlite:///{tmp_path}/m.db", "reservation_ttl_s": 3},
                         pricing={"models": [{"model": "mux-2m", "output_per_1m_usd": 60_000.0}]})
    config["server"] = {**config["server"], "stream_idle_timeout_s": 3600}
    cfg = parse_config(config)
    backend = StallsAfterOneToken(make_backend(cfg, use_ray=False))
    with ServerThread(create_app(cfg, backend)) as server:
        admission: StoreAdmission = server.app.state.gateway.tenancy.admission
        body = {"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": 10}  # worst case $0.6 of the $1 budget
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {KEY_ALPHA}"}) as resp:
            assert resp.status_code == 200
            time.sleep(5)  # past its 3 s ttl; the gateway renews it every third of that
            assert admission._running  # still running
            second = httpx.post(server.base_url + "/v1/chat/completions", timeout=30,
                                headers={"authorization": f"Bearer {KEY_ALPHA}"},
                                json={**body, "stream": False})
        assert second.status_code == 429, second.text  # the running request's $0.6 is still held
        assert second.headers["x-muxgate-limit"] == "team_budget"
