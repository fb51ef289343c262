"""When a usage record is durable relative to the answer. With the settlement journal (the
default) a stream's last bytes do not wait for a busy store: the record is on local disk first and
reaches the store once it is free. With `store.journal_dir: null` the answer waits for the store.
Made deterministic by holding the SQLite write lock from outside, mid-stream."""

from __future__ import annotations

import sqlite3
import threading

import httpx
import pytest

from support import KEY_ALPHA, ServerThread
from tenancy_testkit import tenancy_config


def _stream_in_background(base_url: str) -> tuple[threading.Event, threading.Event, dict]:
    """A streamed chat request; `started` is set at its first event, `done` when [DONE] arrived."""
    started, done, out = threading.Event(), threading.Event(), {}

    def run():
        body = {"model": "mux-2m", "messages": [{"role": "user", "content": "tell me a long story"}],
                "max_tokens": 400, "stream": True}
        with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {KEY_ALPHA}"}) as resp:
            out["status"] = resp.status_code
            out["request_id"] = resp.headers.get("x-request-id")
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    started.set()
                    if line.strip() == "data: [DONE]":
                        done.set()

    threading.Thread(target=run, daemon=True).start()
    return started, done, out


def _records(db) -> list[str]:
    with sqlite3.connect(str(db)) as conn:
        return [row[0] for row in conn.execute("SELECT request_id FROM usage_records")]


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_a_busy_store_delays_the_answer_only_without_the_journal(zoo_dir, tmp_path, journal):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend

    db = tmp_path / "muxgate.db"
    store = {"url": f"sqlite:///{db}", **({} if journal else {"journal_dir": None})}
    cfg = parse_config(tenancy_config(zoo_dir, store["url"], store=store))
    with ServerThread(create_app(cfg, make_backend(cfg, use_ray=False))) as server:
        started, done, out = _stream_in_background(server.base_url)
        assert started.wait(60)  # admitted (reserved) and streaming
        lock = sqlite3.connect(str(db), isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")  # as a store busy with another gateway's writes would be
        try:
            answered_while_locked = done.wait(15 if journal else 3)
            assert out["request_id"] not in _records(db)  # the store has not got it yet either way
        finally:
            lock.rollback()
            lock.close()
        assert answered_while_locked is journal
        assert done.wait(60) and out["status"] == 200
        usage = httpx.get(server.base_url + "/v1/usage", headers={"authorization": f"Bearer {KEY_ALPHA}"},
                          timeout=30).json()
        assert out["request_id"] in [r["request_id"] for r in usage["data"]]  # the report sees it at once
        assert out["request_id"] in _records(db)
