"""Logs and headers an operator relies on: request ids, overhead, and no secrets or prompts in logs."""

import json
import logging

import httpx

from gateway.http.logs import JsonFormatter
from support import KEY_ALPHA

SECRET_PROMPT = "my-very-private-prompt-text-42"


def test_request_log_is_json_with_ids_and_without_key_or_prompt(gateway, caplog):
    caplog.set_level(logging.INFO, logger="muxgate.requests")
    resp = httpx.post(gateway.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_ALPHA}"},
                      json={"model": "mux-2m", "messages": [{"role": "user", "content": SECRET_PROMPT}],
                            "max_tokens": 2}, timeout=60)
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    records = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
    assert records, "no log line carries the response's request id"
    line = JsonFormatter().format(records[-1])
    entry = json.loads(line)
    assert entry["request_id"] == rid and entry["model"] == "mux-2m" and entry["status"] == "ok"
    assert (entry["tool_calls"], entry["constrained"]) == (0, None)  # a plain chat: no calls, free text
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert KEY_ALPHA not in everything
    assert SECRET_PROMPT not in everything


def test_overhead_header_is_a_small_non_negative_number(gateway):
    resp = httpx.post(gateway.base_url + "/v1/completions", headers={"Authorization": f"Bearer {KEY_ALPHA}"},
                      json={"model": "mux-2m", "prompt": "x", "max_tokens": 3}, timeout=60)
    overhead = float(resp.headers["x-muxgate-overhead-ms"])
    total_ms = resp.elapsed.total_seconds() * 1000
    assert 0 <= overhead <= total_ms
