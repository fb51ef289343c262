"""Two `muxgate serve --no-ray` processes sharing one Redis: budgets and rate limits hold across
them under 200 concurrent requests (streams and client disconnects included), and a key revoked
through one is refused by the other within a second."""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal

import httpx
import openai
import pytest
import redis

from gateway.config import PricingConfig
from gateway.tenancy.costs import CostModel
from gateway.tenancy.estimate import prompt_token_bound
from tenancy_testkit import Admin, GatewayProcess, redis_prefix, tenancy_config
from workers.types import GenerationRequest

MESSAGES = [{"role": "user", "content": "Hi"}]
MAX_TOKENS = 256  # long enough that abandoned streams are abandoned mid-generation
CONTEXT = 2048  # the zoo models'
# Completion tokens only ($0.001 each): a request that generates all MAX_TOKENS costs exactly
# its worst-case reservation, so "no more full-cost requests than the budget's worst cases" is
# a sharp check.
PRICES = [{"model": "mux-2m", "output_per_1m_usd": 1000.0}]
CONCURRENT = 200


@pytest.fixture(scope="module")
def gateways(zoo_dir, redis_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two-gateways")
    prefix = redis_prefix()
    config = tenancy_config(zoo_dir, f"{redis_url}?prefix={prefix}", models=[{"name": "mux-2m", "zoo": True}],
                            pricing={"models": PRICES})
    procs = [GatewayProcess(config, workdir, name).start() for name in ("a", "b")]
    try:
        for proc in procs:
            proc.wait_ready()
        admin = Admin(procs[0].base_url)
        admin.team("warmup")
        key = admin.key("warmup")["secret"]
        for proc in procs:  # load the model in both processes before anything is measured
            openai.OpenAI(base_url=proc.base_url + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model="mux-2m", messages=MESSAGES, max_tokens=1)
        yield procs, admin
    finally:
        for proc in procs:
            proc.stop()
        client = redis.Redis.from_url(redis_url)
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(names), 500):
            client.delete(*names[i:i + 500])
        client.close()


async def _fire(base_urls: list[str], key: str, n: int, max_tokens: int) -> list[tuple[str, object]]:
    """n concurrent requests spread over the gateways: a third plain, a third streamed, a third
    streamed and abandoned after the first chunk. Returns (kind, outcome) per request: outcome is
    'ok' or the openai.APIStatusError that refused it."""
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n), timeout=120)
    clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key=key, max_retries=0, http_client=http)
               for u in base_urls]
    start = asyncio.Event()

    async def one(i: int):
        client, kind = clients[i % len(clients)], ("plain", "stream", "leave")[i % 3]
        args = dict(model="mux-2m", messages=MESSAGES, max_tokens=max_tokens, temperature=0)
        await start.wait()
        try:
            if kind == "plain":
                await client.chat.completions.create(**args)
            else:
                stream = await client.chat.completions.create(stream=True, **args)
                async for _ in stream:
                    if kind == "leave":
                        break
                await stream.close()
        except openai.APIStatusError as exc:
            return kind, exc
        return kind, "ok"

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.05)
    start.set()
    results = await asyncio.gather(*tasks)
    await http.aclose()
    return results


def _settled(admin: Admin, team: str, expected: int) -> list[dict]:
    """The team's ledger once nothing is reserved any more (every admitted request settled)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        spend = admin.call("GET", f"/v1/admin/teams/{team}")["spend"]
        records = admin.call("GET", "/v1/usage", params={"team": team, "from": "2000-01-01", "limit": 10000})["data"]
        if spend["reserved_usd"] == 0 and len(records) >= expected:
            return records
        time.sleep(0.1)
    raise AssertionError(f"team {team}: settlements did not finish")


def test_budget_holds_across_two_gateways(gateways):
    procs, admin = gateways
    costs = CostModel.from_config(PricingConfig.model_validate({"models": PRICES}))
    worst = costs.worst_case("mux-2m", prompt_token_bound(GenerationRequest("x", messages=MESSAGES)), MAX_TOKENS,
                             CONTEXT).cost_usd
    budget = worst * Decimal("20.5")  # room for 20 worst cases, not 21
    admin.team("budget", budget_usd=str(budget), budget_period="total")
    key = admin.key("budget")["secret"]

    results = asyncio.run(_fire([p.base_url for p in procs], key, CONCURRENT, MAX_TOKENS))
    admitted = [kind for kind, outcome in results if outcome == "ok"]
    refused = [outcome for _, outcome in results if outcome != "ok"]
    for exc in refused:
        assert exc.status_code == 429, exc
        body = exc.response.json()["error"]
        assert body["code"] == "insufficient_quota" and "team_budget" in body["message"]
    records = _settled(admin, "budget", len(admitted))
    spend = admin.call("GET", "/v1/admin/teams/budget")["spend"]

    spent = Decimal(str(spend["spent_usd"]))
    assert spent <= budget  # never overspent, across two processes
    assert sum(Decimal(str(r["cost_usd"])) for r in records) == spent
    assert len(records) == len(admitted)  # one record per admitted request, none for refusals
    assert {"plain", "stream", "leave"} <= set(admitted)
    floor = math.floor(budget / worst)
    assert len(admitted) >= floor  # every worst case that fits was admitted
    full = [r for r in records if r["completion_tokens"] == MAX_TOKENS]
    assert all(Decimal(str(r["cost_usd"])) == worst for r in full)
    assert len(full) <= floor  # at most as many full-cost requests as the budget holds worst cases
    # more than `floor` only through budget that abandoned (cheaper) requests handed back
    cheap = [r for r in records if r["completion_tokens"] < MAX_TOKENS]
    assert len(admitted) <= floor + len(cheap)
    statuses = sorted(r["status"] for r in records)
    print(f"\nbudget: {len(admitted)} of {CONCURRENT} admitted (worst-case bound {floor}), "
          f"{len(cheap)} cheaper than the worst case, spent ${spent} of ${budget}; "
          f"statuses {dict((s, statuses.count(s)) for s in set(statuses))}")


def test_rpm_holds_across_two_gateways(gateways):
    procs, admin = gateways
    admin.team("rpm", rpm_limit=20)
    key = admin.key("rpm")["secret"]
    began = time.monotonic()
    results = asyncio.run(_fire([p.base_url for p in procs], key, CONCURRENT, 8))
    elapsed = time.monotonic() - began
    admitted = [kind for kind, outcome in results if outcome == "ok"]
    for _, exc in results:
        if exc == "ok":
            continue
        assert exc.status_code == 429, exc
        assert exc.response.json()["error"]["code"] == "rate_limit_exceeded"
        assert "team_rpm" in exc.response.json()["error"]["message"]
        assert 1 <= int(exc.response.headers["retry-after"]) <= 60
    # GCRA: a burst of the limit, then one more request every 60/20 = 3 seconds
    assert 20 <= len(admitted) <= 20 + math.ceil(elapsed / 3), (len(admitted), elapsed)
    assert len(_settled(admin, "rpm", len(admitted))) == len(admitted)
    print(f"\nrpm: {len(admitted)} of {CONCURRENT} admitted in {elapsed:.1f}s (limit 20/min)")


def test_key_revoked_on_one_gateway_fails_on_the_other_within_a_second(gateways):
    (a, b), admin = gateways
    admin.team("rev")
    created = admin.key("rev")
    on_b = openai.OpenAI(base_url=b.base_url + "/v1", api_key=created["secret"], max_retries=0, timeout=30)
    on_b.chat.completions.create(model="mux-2m", messages=MESSAGES, max_tokens=1)
    assert on_b.models.list()  # b now holds the key in its lookup cache

    admin.call("POST", f"/v1/admin/keys/{created['id']}/revoke")  # through gateway a
    revoked_at = time.monotonic()
    deadline = revoked_at + 1.0
    while True:
        try:
            on_b.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "gateway b still accepts the revoked key after 1 s"
        time.sleep(0.02)
    print(f"\nrevocation seen by the other gateway after {time.monotonic() - revoked_at:.3f}s")
    with pytest.raises(openai.AuthenticationError):
        on_b.chat.completions.create(model="mux-2m", messages=MESSAGES, max_tokens=1)
