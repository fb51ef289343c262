"""The inference routes are Starlette routes like any other (issue 19 item 13): a middleware
added inside the gateway's own sees /v1/chat/completions and /v1/completions, and every answer
still carries x-request-id."""

import httpx
from starlette.middleware import Middleware

from support import KEY_ALPHA, ServerThread, make_config


class SeesPaths:
    """A plain ASGI middleware that notes each HTTP request's path and its request id."""

    seen: list[tuple[str, str | None]] = []

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            SeesPaths.seen.append((scope["path"], scope.get("state", {}).get("request_id")))
        await self.app(scope, receive, send)


def test_a_middleware_added_inside_sees_inference_requests(zoo_dir):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    cfg = parse_config(make_config(zoo_dir))
    app = create_app(cfg, make_backend(cfg, use_ray=False))
    app.user_middleware.append(Middleware(SeesPaths))  # innermost: inside the request-id middleware
    SeesPaths.seen.clear()
    with ServerThread(app) as server:
        auth = {"authorization": f"Bearer {KEY_ALPHA}"}
        chat = httpx.post(server.base_url + "/v1/chat/completions", headers=auth, timeout=60,
                          json={"model": "mux-2m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        legacy = httpx.post(server.base_url + "/v1/completions", headers=auth, timeout=60,
                            json={"model": "mux-2m", "prompt": "hi", "max_tokens": 2})
        models = httpx.get(server.base_url + "/v1/models", headers=auth, timeout=60)
        missing = httpx.post(server.base_url + "/v1/nothing", headers=auth, timeout=60)
        wrong_method = httpx.get(server.base_url + "/v1/chat/completions", headers=auth, timeout=60)
    assert [r.status_code for r in (chat, legacy, models, missing, wrong_method)] == [200, 200, 200, 404, 405]
    paths = [p for p, _ in SeesPaths.seen]
    assert paths == ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/nothing", "/v1/chat/completions"]
    for resp, (_, rid) in zip((chat, legacy, models, missing, wrong_method), SeesPaths.seen):
        assert rid and resp.headers["x-request-id"] == rid  # one id, seen inside and sent back
