"""After a mixed run (streams, non-streams, errors before and after the first token, client
disconnects) with the store refusing the first settlements, every admitted request has exactly
one ledger record, and the reports (JSON, CSV, CLI) add up to the ledger to the cent."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from decimal import Decimal

import httpx
import openai
import pytest
import yaml

from gateway.http.errors import BackendFailed
from gateway.store import StoreUnavailable
from support import KEY_ALPHA, KEY_BETA, ServerThread, WrappedBackend
from tenancy_testkit import ADMIN_KEY, tenancy_config


class FaultyBackend(WrappedBackend):
    """The real in-process pool, failing on request: FAIL-EARLY before the first token, FAIL-MID
    after two chunks."""

    async def generate(self, model, req):
        text = req.prompt if req.prompt is not None else req.messages[-1]["content"]
        if "FAIL-EARLY" in text:
            raise BackendFailed("injected failure before the first token")
        sent = 0
        async for chunk in self.inner.generate(model, req):
            yield chunk
            sent += 1
            if "FAIL-MID" in text and sent == 2:
                raise BackendFailed("injected failure mid-stream")


class FlakyStore:
    """A real store whose first ``failures`` settlements fail as if it were unreachable."""

    def __init__(self, inner, failures: int):
        self.inner = inner
        self.failures = failures

    async def settle(self, reservation, record):
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("injected outage")
        return await self.inner.settle(reservation, record)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def mixed_gateway(zoo_dir, tmp_path_factory):
    from gateway.http.app import create_app
    from gateway.config import parse_config
    from gateway.server import make_backend
    from gateway.store import open_store

    workdir = tmp_path_factory.mktemp("ledger")
    url = f"sqlite:///{workdir / 'muxgate.db'}"
    raw = tenancy_config(zoo_dir, url)
    cfg = parse_config(raw)
    store = FlakyStore(open_store(url), failures=4)
    app = create_app(cfg, FaultyBackend(make_backend(cfg, use_ray=False)), store=store)
    with ServerThread(app) as server:
        server.config_path = workdir / "muxgate.yaml"
        server.config_path.write_text(yaml.safe_dump(raw))
        server.store = store
        yield server


async def _mixed_run(base_url: str) -> dict[str, int]:
    """Fire the mix concurrently; returns how many requests of each kind were sent."""
    alpha = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)
    beta = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=KEY_BETA, max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "Tell me something."}]

    async def plain(client, model):
        await client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0)

    async def text(client):
        await client.completions.create(model="mux-2m", prompt="Once upon", max_tokens=5, temperature=0)

    async def stream(client, model):
        async for _ in await client.chat.completions.create(
                model=model, messages=msgs, max_tokens=8, temperature=0, stream=True,
                stream_options={"include_usage": True}):
            pass

    async def stream_then_leave(client):
        s = await client.chat.completions.create(model="mux-2m", messages=msgs, max_tokens=1500, stream=True)
        async for _ in s:
            break
        await s.close()

    async def wait_then_leave():
        # a non-streamed request whose client gives up while the model is still generating
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=0.3)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(base_url + "/v1/completions", headers={"authorization": f"Bearer {KEY_ALPHA}"},
                                json={"model": "mux-2m", "prompt": "Go", "max_tokens": 1500})

    async def fails(client, marker, streamed):
        kwargs = dict(model="mux-2m", messages=[{"role": "user", "content": marker}], max_tokens=6)
        try:
            if streamed:
                async for _ in await client.chat.completions.create(stream=True, **kwargs):
                    pass
            else:
                await client.chat.completions.create(**kwargs)
        except openai.APIError:
            return
        raise AssertionError(f"{marker} did not fail")

    async def too_long(client):
        with pytest.raises(openai.BadRequestError):
            await client.completions.create(model="mux-2m", prompt="word " * 3000, max_tokens=2)

    jobs = {
        "plain": [plain(c, m) for c in (alpha, beta) for m in ("auto", "mux-2m", "mux-5m")],
        "text": [text(alpha), text(beta)],
        "stream": [stream(c, m) for c in (alpha, beta) for m in ("mux-2m", "mux-5m")],
        "stream_disconnect": [stream_then_leave(alpha), stream_then_leave(beta)],
        "wait_disconnect": [wait_then_leave()],
        "error_early": [fails(alpha, "FAIL-EARLY", False), fails(beta, "FAIL-EARLY", True)],
        "error_mid": [fails(alpha, "FAIL-MID", False), fails(beta, "FAIL-MID", True)],
        "error_context": [too_long(alpha)],
    }
    await asyncio.gather(*(job for group in jobs.values() for job in group))
    await alpha.close()
    await beta.close()
    return {kind: len(group) for kind, group in jobs.items()}


def _ledger(admin: httpx.Client, expected: int) -> list[dict]:
    """The raw ledger once every admitted request has settled (settlement runs after responses)."""
    deadline = time.monotonic() + 60
    while True:
        records = admin.get("/v1/usage", params={"from": "2000-01-01", "limit": 10000}).json()["data"]
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_report_totals_equal_the_ledger_after_a_mixed_run(mixed_gateway, capsys):
    sent = asyncio.run(_mixed_run(mixed_gateway.base_url))
    admin = httpx.Client(base_url=mixed_gateway.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"},
                         timeout=30)
    records = _ledger(admin, sum(sent.values()))
    assert len(records) == sum(sent.values()), sent  # every admitted request: exactly one record
    assert len({r["request_id"] for r in records}) == len(records)
    statuses = [r["status"] for r in records]
    assert statuses.count("error") == sent["error_early"] + sent["error_mid"] + sent["error_context"]
    assert statuses.count("client_disconnect") == sent["stream_disconnect"] + sent["wait_disconnect"]
    assert mixed_gateway.store.failures == 0  # the outage happened, and was ridden out

    # the streamed and disconnected requests were charged for what they used, not $0
    streamed = [r for r in records if r["status"] == "client_disconnect"]
    assert all(r["completion_tokens"] > 0 and r["cost_usd"] > 0 for r in streamed)
    assert all(r["routed_model"] in ("mux-2m", "mux-5m") and r["latency_ms"] > 0 for r in records)
    assert all(r["baseline_cost_usd"] >= r["cost_usd"] for r in records)  # mux-5m is the baseline

    window = {"from": "2000-01-01", "to": time.time() + 3600}
    report = admin.get("/v1/reports/usage", params={**window, "group_by": "team,model,day"}).json()
    totals = report["totals"]
    micros = lambda v: round(Decimal(str(v)) * 1_000_000)  # noqa: E731
    assert totals["requests"] == len(records)
    assert totals["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert totals["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    assert micros(totals["cost_usd"]) == sum(micros(r["cost_usd"]) for r in records)
    assert micros(totals["baseline_cost_usd"]) == sum(micros(r["baseline_cost_usd"]) for r in records)
    assert round(totals["cost_usd"], 2) == round(float(sum(Decimal(str(r["cost_usd"])) for r in records)), 2)
    assert totals["errors"] == statuses.count("error")
    assert abs(totals["gpu_seconds"] - sum(r["gpu_seconds"] for r in records)) < 1e-5
    # each group's rows add up to the totals, and every grouping agrees
    assert sum(micros(r["cost_usd"]) for r in report["data"]) == micros(totals["cost_usd"])
    for group_by in ("team", "model", "requested_model", "key,hour", ""):
        other = admin.get("/v1/reports/usage", params={**window, "group_by": group_by}).json()
        assert other["totals"] == totals, group_by

    rows = list(csv.DictReader(io.StringIO(admin.get("/v1/reports/usage", params={**window, "format": "csv"}).text)))
    assert len(rows) == len(report["data"])
    assert sum(Decimal(r["cost_usd"]) for r in rows) * 1_000_000 == micros(totals["cost_usd"])
    via_accept = admin.get("/v1/reports/usage", params=window, headers={"accept": "text/csv"})
    assert via_accept.headers["content-type"].startswith("text/csv")

    from gateway.cli import main

    main(["report", "--config", str(mixed_gateway.config_path), "--from", "2000-01-01",
          "--to", str(window["to"]), "--format", "json"])
    cli = json.loads(capsys.readouterr().out)
    assert cli["totals"] == totals and cli["data"] == report["data"]

    metrics = httpx.get(mixed_gateway.base_url + "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    buffered = _metric(metrics, "muxgate_ledger_buffered_total")
    assert buffered >= 1 and _metric(metrics, "muxgate_ledger_replayed_total") == buffered
    assert _metric(metrics, "muxgate_ledger_dropped_total") == 0
    assert _metric(metrics, "muxgate_ledger_pending") == 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
