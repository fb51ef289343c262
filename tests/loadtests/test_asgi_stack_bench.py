"""The ASGI stack bench times stacks that really answer the request (a stack that dropped the
request before the endpoint would look free)."""

import asyncio

from loadtests.asgi_stack_bench import _receive, _scope, stacks


def test_every_stack_reaches_the_endpoint_and_answers_200():
    for name, app in stacks().items():
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(app(_scope(), _receive, send))
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200, name
        assert sent[-1]["body"] == b'{"ok":true}', name
