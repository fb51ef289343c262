"""Realistic HTTP load against a running muxgate: several teams, mixed prompt lengths, streamed
and non-streamed chat, text completions, `auto` and named models.

  MUXGATE_KEYS=mg-key-team-a,mg-key-team-b \
  locust -f loadtests/locustfile.py --headless -u 20 -r 5 -t 60s --host http://127.0.0.1:8000

429s are what budgets and rate limits are for: they count as successes (tagged "limited"),
everything else that is not a 200 is a failure. Install with `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

from loadtests.prompts import load_prompts

PROMPTS = load_prompts()
KEYS = [k for k in os.environ.get("MUXGATE_KEYS", "").split(",") if k] or [
    open(os.environ.get("MUXGATE_KEY_FILE", "var/demo.key")).read().strip()]
MODELS = os.environ.get("MUXGATE_MODELS", "auto,mux-2m,mux-5m").split(",")
MAX_TOKENS = int(os.environ.get("MUXGATE_MAX_TOKENS", "16"))


class TeamUser(HttpUser):
    wait_time = between(0.1, 1.0)

    def on_start(self):
        self.rng = random.Random()
        self.key = self.rng.choice(KEYS)  # each simulated user belongs to one team
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def _post(self, path: str, body: dict, name: str, stream: bool = False):
        with self.client.post(path, json=body, headers=self.headers, name=name, stream=stream,
                              catch_response=True) as resp:
            if resp.status_code == 429:
                resp.success()  # an intended limit, not a failure
                return
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            if stream:
                saw_done = False
                for line in resp.iter_lines():
                    if line and line.startswith(b"data: "):
                        payload = line[6:]
                        if payload == b"[DONE]":
                            saw_done = True
                        elif b'"error"' in payload[:12]:
                            resp.failure(json.loads(payload)["error"]["message"])
                            return
                if not saw_done:
                    resp.failure("stream ended without [DONE]")

    @task(4)
    def chat(self):
        body = {"model": self.rng.choice(MODELS), "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}]}
        self._post("/v1/chat/completions", body, "chat")

    @task(4)
    def chat_stream(self):
        body = {"model": self.rng.choice(MODELS), "max_tokens": MAX_TOKENS, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}]}
        self._post("/v1/chat/completions", body, "chat_stream", stream=True)

    @task(1)
    def completion(self):
        body = {"model": self.rng.choice(MODELS), "max_tokens": MAX_TOKENS, "prompt": self.rng.choice(PROMPTS)}
        self._post("/v1/completions", body, "completion")

    @task(1)
    def models(self):
        self.client.get("/v1/models", headers=self.headers, name="models")
