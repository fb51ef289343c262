"""The chaos bench's faults on one running gateway: bad input and models that cannot load (the
processes killed and restarted are in loadtests/chaos_restarts.py, Ray in chaos_ray.py).

Each fault is an async function returning a FaultReport (loadtests/chaos_ledger.py); the bench prints
them, tests/reliability asserts them. Sizes are parameters so the tests can run them small.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.chaos_client import CLIENT_TIMEOUT, Load, Outcome, call, chat
from loadtests.chaos_kit import MODEL, GatewayProcess, budget_for, gateway_config
from loadtests.chaos_ledger import Admin, FaultReport, settled_ledger

BROKEN_MODELS = ("broken-header", "broken-weights", "oversized")
DEVICE_BUDGET_MB = 256  # holds mux-2m, mux-5m and a broken copy of mux-2m; not the 2 GiB "oversized"


def _tag() -> str:
    return uuid.uuid4().hex[:6]


# ---- checkpoints that cannot load -----------------------------------------------------------


def make_broken_checkpoints(zoo_dir: Path, workdir: Path) -> dict[str, Path]:
    """Three checkpoint directories next to a good one (copies of mux-2m's):
    - broken-header: the safetensors header is not JSON (found before the load starts)
    - broken-weights: a valid header, the tensor data cut in half (found while loading)
    - oversized: a valid header naming 2 GiB of weights, more than the pool's device budget"""
    source = Path(zoo_dir) / MODEL
    out = {}
    for name in BROKEN_MODELS:
        target = workdir / "checkpoints" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        out[name] = target
    weights = (source / "model.safetensors").read_bytes()
    (out["broken-header"] / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    (n,) = struct.unpack("<Q", weights[:8])
    (out["broken-weights"] / "model.safetensors").write_bytes(weights[:8 + n + (len(weights) - 8 - n) // 2])
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [262144, 2048],
                                                       "data_offsets": [0, 262144 * 2048 * 4]}}).encode()
    (out["oversized"] / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return out


def sqlite_gateway_config(zoo_dir: Path, workdir: Path, **server) -> dict:
    """A SQLite-store gateway serving mux-2m and mux-5m plus the three models that cannot load."""
    broken = make_broken_checkpoints(zoo_dir, workdir)
    models = [{"name": MODEL, "zoo": True}, {"name": "mux-5m", "zoo": True},
              *({"name": name, "path": str(path)} for name, path in broken.items())]
    return gateway_config(zoo_dir, f"sqlite:///{(workdir / 'chaos.db').resolve()}", models=models,
                          pool={"device_budget_mb": DEVICE_BUDGET_MB}, **server)


async def warm(base_url: str, key: str, model: str = MODEL, within_s: float = 120.0) -> list[Outcome]:
    """Load `model` before anything is measured; every request sent counts like any other.

    A load can outlast a short first-token timeout on a busy machine: the request then gets a
    503 while the load goes on, and the next one is tried (until `within_s`)."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
        while True:
            o = await call(client, base_url, key, chat(model, 1), label="warmup")
            outcomes.append(o)
            if o.succeeded:
                return outcomes
            if o.code != "backend_unavailable" or time.monotonic() > deadline:
                raise RuntimeError(f"warm-up request failed: {o.brief()} {o.error}")
            await asyncio.sleep(0.5)


async def spend_budget(report: FaultReport, base_url: str, key: str, requests: int) -> None:
    """Closed-loop load on a budget team until the budget refuses every worker (or `requests`)."""
    load = Load(lambda: base_url, key, workers=2, label="budget").start()
    await load.until_budget_hit(max_requests=requests, timeout_s=60)
    report.outcomes += await load.stop()


async def account(report: FaultReport, store_url: str, since: float, budget_team: str,
                  other_team: str | None = None, wait_s: float = 15.0) -> None:
    """Match the admitted requests to the ledger: the load's (labels `load` and `budget`) in the
    budget team, the rest (warm-ups, probes) in `other_team`."""
    admitted = {o.request_id for o in report.outcomes if o.admitted}
    budget_ids = {o.request_id for o in report.outcomes if o.admitted and o.label in ("load", "budget")}
    if other_team is None or other_team == budget_team:  # one team sent everything
        budget_ids = admitted
    other_ids = admitted - budget_ids
    report.account(await settled_ledger(store_url, budget_team, since, budget_ids, wait_s), budget_ids)
    if other_ids:
        found = {r.request_id for r in (await settled_ledger(store_url, other_team, since, other_ids, wait_s)).records}
        report.records_expected += len(other_ids)
        report.records_found += len(other_ids & found)
        report.records_extra += len(found - other_ids)


# ---- bad input ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadCase:
    name: str
    body: object  # dict (sent as JSON), bytes, or a callable giving fresh content (a streamed body)
    expect: tuple  # statuses that are right
    key: str | None = "probe"  # "probe": a valid key; None: no Authorization; anything else: sent as is
    model: str = MODEL


def _raw(**fields) -> bytes:
    return json.dumps(chat(max_tokens=2, **fields)).encode()


def _chunked_body(size: int):
    async def body():
        for _ in range(size // 65536 + 1):
            yield b"x" * 65536
    return body


TWO_MIB = 2 * 1024 * 1024
BAD_INPUT = [
    BadCase("invalid_utf8", b'{"model":"mux-2m","messages":[{"role":"user","content":"\xff\xfe"}],"max_tokens":2}', (400,)),
    BadCase("malformed_json", b'{"model": "mux-2m", "messages": [', (400,)),
    BadCase("not_an_object", b"[1, 2, 3]", (400,)),
    BadCase("nan", _raw().replace(b'"temperature": 0', b'"temperature": NaN'), (400,)),
    BadCase("infinity", _raw().replace(b'"temperature": 0', b'"temperature": 0, "top_p": Infinity'), (400,)),
    BadCase("unknown_field", chat(frobnicate=True), (400,)),
    # an OpenAI field muxgate does not serve (tools are served since issue 16: a bad tool is its own case)
    BadCase("unsupported_field", chat(modalities=["audio"]), (400,)),
    BadCase("unknown_tool_choice", chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                        tool_choice={"type": "function", "function": {"name": "g"}}), (400,)),
    BadCase("empty_messages", {"model": MODEL, "messages": []}, (400,)),
    BadCase("missing_messages", {"model": MODEL}, (400,)),
    BadCase("wrong_type", chat(max_tokens="many"), (400,)),
    BadCase("negative_max_tokens", chat(max_tokens=-1), (400,)),
    BadCase("unknown_role", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, (400,)),
    BadCase("unknown_model", chat("gpt-9"), (404,)),
    BadCase("missing_key", chat(), (401,), key=None),
    BadCase("wrong_key", chat(), (401,), key="mg-0123456789abcdef_not-a-real-key-at-all-000000000000000"),
    BadCase("huge_body", chat(content="x" * TWO_MIB), (413,)),
    BadCase("huge_body_chunked", _chunked_body(TWO_MIB), (413,)),
    BadCase("prompt_longer_than_context", chat(content="hello " * 4000), (400,)),
    BadCase("huge_max_tokens", chat(max_tokens=10**9), (400,)),
]
# Found by this bench (see the report): each is a 5xx today, and a 4xx once fixed.
BAD_INPUT_BUGS = [
    BadCase("deeply_nested_json", b'{"model":"mux-2m","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}", (400,)),
    BadCase("lone_surrogate", b'{"model":"mux-2m","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}',
            (400, 200)),
    BadCase("seed_out_of_range", chat(seed=2**70), (400, 200)),
]
# Valid by the API's schema but extreme: the answer is a 200 (or a 400), and the model must keep
# serving afterwards. mux-5m, so a model killed by them is not the one the other faults use.
EXTREME_SAMPLING = [
    BadCase("tiny_temperature", chat("mux-5m", 2, temperature=1e-300), (200, 400), model="mux-5m"),
    BadCase("tiny_top_p", chat("mux-5m", 2, temperature=1.0, top_p=1e-300), (200, 400), model="mux-5m"),
]


async def _send_case(client: httpx.AsyncClient, base_url: str, probe_key: str, case: BadCase) -> Outcome:
    key = probe_key if case.key == "probe" else case.key
    content = case.body() if callable(case.body) else None
    body = None if content is not None else case.body
    return await call(client, base_url, key, body, content=content, label=f"bad:{case.name}", expect=case.expect)


async def bad_input(gw: GatewayProcess, cases: list[BadCase] | None = None, budget_requests: int = 3) -> FaultReport:
    """A concurrent burst of malformed requests (every answer a 4xx with OpenAI's body, no 5xx),
    then the extreme-sampling cases, then a normal request to each model they used (still served)."""
    report = FaultReport("bad_input")
    began, since = time.monotonic(), time.time()
    cases = list(BAD_INPUT + BAD_INPUT_BUGS + EXTREME_SAMPLING) if cases is None else cases
    admin = Admin(gw.base_url)
    tag = _tag()
    probe_team, budget_team = f"bad-probe-{tag}", f"bad-budget-{tag}"
    probe_key = await admin.open_team(probe_team)
    budget = budget_for(budget_requests)
    budget_key = await admin.budget_team(budget_team, budget)
    burst = [c for c in cases if c not in EXTREME_SAMPLING]
    extreme = [c for c in cases if c in EXTREME_SAMPLING]
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
        report.outcomes += await asyncio.gather(*(_send_case(client, gw.base_url, probe_key, c) for c in burst))
        report.outcomes += await asyncio.gather(*(_send_case(client, gw.base_url, probe_key, c) for c in extreme))
        for model in sorted({MODEL, *(c.model for c in extreme)}):
            o = await call(client, gw.base_url, probe_key, chat(model, 2), label=f"still-serving:{model}", expect=(200,))
            report.outcomes.append(o)
            report.checks[f"{model}_still_serves"] = o.succeeded
    for o in report.outcomes:  # a 5xx is never the answer to bad input
        if o.status is not None and o.status >= 500 and o.problem is None:
            o.problem = f"{o.status} {o.code} for bad input"
    await spend_budget(report, gw.base_url, budget_key, requests=budget_requests * 4 + 8)
    await account(report, gw.store_url, since, budget_team, probe_team)
    report.checks["gateway_alive"] = gw.process is None or gw.process.poll() is None
    report.notes["cases"] = {o.label.removeprefix("bad:"): o.status for o in report.outcomes if o.label.startswith("bad:")}
    await admin.aclose()
    report.seconds = time.monotonic() - began
    return report


# ---- models that cannot load ----------------------------------------------------------------


async def model_load_fails(gw: GatewayProcess, rounds: int = 2, good_per_round: int = 3,
                           budget_requests: int = 6) -> FaultReport:
    """Requests for a corrupt checkpoint, a truncated one and one larger than the device budget,
    mixed with requests for a good model: a clear 503 naming the model and the reason, the pool's
    memory accounting untouched, the good model served throughout."""
    report = FaultReport("model_load_fails")
    began, since = time.monotonic(), time.time()
    admin = Admin(gw.base_url)
    tag = _tag()
    probe_team, budget_team = f"load-probe-{tag}", f"load-budget-{tag}"
    key = await admin.open_team(probe_team)
    budget_key = await admin.budget_team(budget_team, budget_for(budget_requests))
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
        for r in range(rounds):  # the second round: a model that failed fails again, as fast
            sends = [call(client, gw.base_url, key, chat(name, 2), stream=bool(i % 2), label=f"broken:{name}")
                     for name in BROKEN_MODELS for i in range(2)]
            sends += [call(client, gw.base_url, key, chat(MODEL), stream=bool(i % 2), label="good")
                      for i in range(good_per_round)]
            report.outcomes += await asyncio.gather(*sends)
        health = await client.get(gw.base_url + "/healthz")
        pool = await admin.call("GET", "/v1/pool")
    broken = [o for o in report.outcomes if o.label.startswith("broken:")]
    good = [o for o in report.outcomes if o.label == "good"]
    reasons = {"broken-header": "cannot read checkpoint", "broken-weights": "failed to load",
               "oversized": "device budget"}
    report.checks["broken_models_503_model_load_failed"] = all(
        o.status == 503 and o.code == "model_load_failed" and not o.in_band for o in broken)
    report.checks["error_names_model_and_reason"] = all(
        o.error is not None and o.label.split(":")[1] in o.error["message"]
        and reasons[o.label.split(":")[1]] in o.error["message"] for o in broken)
    report.checks["good_model_kept_serving"] = bool(good) and all(o.succeeded for o in good)
    if not report.checks["good_model_kept_serving"]:
        report.notes["good_model_failures"] = [f"{o.brief()} {o.error}" for o in good if not o.succeeded][:5]
    report.checks["healthz_ok"] = health.status_code == 200
    replicas = pool.get("data", pool) if isinstance(pool, dict) else pool
    report.checks["pool_accounting_clean"] = bool(replicas) and all(
        not set(BROKEN_MODELS) & set(s["resident"]) and not s["loading"]
        and s["device_reserved_bytes"] == sum(s["resident_bytes"].values()) for s in replicas)
    report.notes["load_failures"] = sum(s.get("load_failures", 0) for s in replicas)
    report.notes["messages"] = {o.label.split(":")[1]: re.sub(r" \(request id \w+\)", "", o.error["message"])[:200]
                                for o in broken if o.error}
    await spend_budget(report, gw.base_url, budget_key, requests=budget_requests * 3 + 8)
    await account(report, gw.store_url, since, budget_team, probe_team)
    report.checks["gateway_alive"] = gw.process is None or gw.process.poll() is None
    await admin.aclose()
    report.seconds = time.monotonic() - began
    return report


async def sqlite_faults(zoo_dir: Path, workdir: Path) -> list[FaultReport]:
    """bad_input and model_load_fails on one SQLite gateway (the bench's way to run them)."""
    gw = GatewayProcess(sqlite_gateway_config(zoo_dir, workdir, stream_first_token_timeout_s=10.0), workdir, "sqlite")
    try:
        gw.start().wait_ready()
        admin = Admin(gw.base_url)
        probe = await admin.open_team(f"warm-{_tag()}")
        await admin.aclose()
        await warm(gw.base_url, probe)
        await warm(gw.base_url, probe, "mux-5m")
        return [await model_load_fails(gw), await bad_input(gw)]
    finally:
        gw.stop()
