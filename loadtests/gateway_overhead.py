"""What a gateway adds to each request, side by side: direct to a fake instant upstream, via
muxgate (auth, routing and usage accounting on), via LiteLLM's proxy, in one run.

Load points: fixed concurrency (1, 8, 32 closed-loop clients) and fixed arrival rates (50, 200,
500 requests/s, open loop). For each point and system: p50/p99 latency, and the added latency
(p50/p99 over direct). Prints one JSON line.
Each point's time per system is split into `--slices` parts (default 4, at least 2 s each) taken
in turn (direct, muxgate, LiteLLM, direct, muxgate, ...), so a shared machine that speeds up or
slows down during the run shifts every system's numbers alike instead of one system's.
Usage: python -m loadtests.gateway_overhead --json [--seconds 8] [--slices 4] [--litellm PATH] [--no-litellm] [--floor]
       [--baseline DIR]
--baseline DIR also runs the muxgate of another checkout (e.g. `git worktree add /tmp/before HEAD`)
as `muxgate_baseline`, in the same turns, so a change is measured against what it changes.
--floor also measures two minimal pass-through proxies between the same load generator and the
same upstream, as a floor for what any extra hop costs on this machine (off by default; the
top-level fields stay muxgate's): `proxy_floor`, uvicorn + a raw ASGI app forwarding with a pooled
aiohttp session (muxgate's own server and client stack, nothing else), and `proxy_raw`, a bare
asyncio (uvloop) HTTP/1.1 relay with one keep-alive upstream connection per client connection.
LiteLLM runs from its own virtualenv (it pins packages muxgate does not need):
  python3 -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

KEY = "mg-bench-0123456789abcdef0123456789"
LITELLM_KEY = "sk-bench-1234"
BODY = {"model": "fake", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0, headers: dict | None = None) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2)
            return
        except Exception:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                            env={**os.environ, **(env or {})})


def _floor_app(upstream_url: str):
    """uvicorn + raw ASGI + pooled aiohttp: forward the body, answer with the upstream's status
    and body. No auth, routing, accounting, metrics or request ids."""
    import aiohttp

    from loadtests.fake_upstream import lifespan, read_body

    session: list = []

    def startup():
        session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30)))

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan(receive, send, startup, lambda: session[0].close())
        body = await read_body(receive)
        path = scope["path"][3:] if scope["path"].startswith("/v1") else scope["path"]
        async with session[0].request(scope["method"], upstream_url + path, data=body,
                                      headers={"content-type": "application/json"}) as resp:
            data = await resp.read()
            status = resp.status
            ctype = resp.headers.get("content-type", "application/json").encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


async def read_http_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message whose body has a Content-Length (or none): its head and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, (await reader.readexactly(length) if length else b"")


async def _raw_relay(port: int, upstream_url: str) -> None:
    """A bare HTTP/1.1 relay on asyncio streams: each client connection gets one keep-alive
    connection to the upstream; requests and answers are relayed by Content-Length, the request
    line's path rewritten from /v1/... to the upstream's base path. Enough for this benchmark."""
    from urllib.parse import urlsplit

    up = urlsplit(upstream_url)
    base = up.path.rstrip("/").encode()

    async def handle(creader, cwriter):
        ureader, uwriter = await asyncio.open_connection(up.hostname, up.port)
        try:
            while True:
                try:
                    head, body = await read_http_message(creader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first, _, rest = head.partition(b"\r\n")
                method, path, version = first.split(b" ", 2)
                if path.startswith(b"/v1/"):
                    path = base + path[3:]
                uwriter.write(b" ".join((method, path, version)) + b"\r\n" + rest + body)
                rhead, rbody = await read_http_message(ureader)
                cwriter.write(rhead + rbody)
        finally:
            uwriter.close()
            cwriter.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def serve_floor(kind: str, port: int, upstream_url: str) -> None:
    import uvloop

    if kind == "raw":
        uvloop.run(_raw_relay(port, upstream_url))
        return
    import uvicorn

    uvicorn.run(_floor_app(upstream_url), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", timeout_keep_alive=30)


def muxgate_config(upstream_url: str, tmp: Path, port: int) -> Path:
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port},
        "admin": {"key": "mg-bench-admin-0123456789abcdef"},
        "keys": [{"team": "bench", "name": "bench", "key": KEY}],
        "store": {"url": f"sqlite:///{tmp / 'bench.db'}"},
        "models": [{"name": "fake", "upstream": {"base_url": upstream_url, "model": "fake"}}],
        "pricing": {"models": [{"model": "fake", "input_per_1m_usd": 1.0, "output_per_1m_usd": 2.0}]},
        "teams": [{"id": "bench"}],  # a team with no limits: accounting on, nothing refused
        "routing": {"default_model": "fake"},
    }
    path = tmp / "muxgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def litellm_config(upstream_url: str, tmp: Path) -> Path:
    config = {"model_list": [{"model_name": "fake", "litellm_params": {"model": "openai/fake", "api_base": upstream_url,
                                                                      "api_key": "unused"}}],
              "general_settings": {"master_key": LITELLM_KEY},
              "litellm_settings": {"drop_params": True, "telemetry": False}}
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def timed_post(session, url, headers, body, latencies: list[float]) -> bool:
    """One request; its latency is recorded only when it succeeded."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            await resp.read()
            ok = resp.status == 200
    except Exception:
        ok = False
    if ok:
        latencies.append(time.perf_counter() - t0)
    return ok


async def closed_loop(session, url, headers, concurrency: int, seconds: float, stream: bool) -> tuple[list[float], int]:
    """`concurrency` clients, each sending its next request as soon as the last one ends."""
    body = {**BODY, "stream": stream}
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client():
        nonlocal errors
        while time.perf_counter() < deadline:
            errors += not await timed_post(session, url, headers, body, latencies)

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return latencies, errors


async def open_loop(session, url, headers, rate: float, seconds: float) -> tuple[list[float], int]:
    """Requests at a fixed arrival rate, whether or not earlier ones have finished."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()

    async def one(i):
        nonlocal errors
        await asyncio.sleep(max(0.0, i / rate - (time.perf_counter() - start)))
        errors += not await timed_post(session, url, headers, BODY, latencies)

    await asyncio.gather(*[one(i) for i in range(int(rate * seconds))])
    return latencies, errors


def summarize(latencies: list[float], errors: int) -> dict:
    if not latencies:
        return {"n": 0, "errors": errors, "p50_ms": None, "p99_ms": None}
    xs = sorted(latencies)
    return {"n": len(xs), "errors": errors, "p50_ms": round(statistics.median(xs) * 1000, 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))] * 1000, 3)}


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat; None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of this VM's CPU time (all CPUs, idle included) that the hypervisor gave to other
    guests instead: a run with a high steal measured the neighbours as much as the systems."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 2)


async def measure(targets: dict, points: list[tuple[str, float]], seconds: float, slices: int = 1) -> dict:
    import aiohttp

    results = {}
    connector = aiohttp.TCPConnector(limit=1024, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for name, (url, headers) in targets.items():  # warm up every path first
            for _ in range(50):
                async with session.post(url, json=BODY, headers=headers) as resp:
                    await resp.read()
        for kind, value in points:
            # the floors relay whole answers; streaming is not what they measure
            names = [n for n in targets if not (kind == "s" and n.startswith("proxy_"))]
            latencies: dict[str, list[float]] = {n: [] for n in names}
            errors = dict.fromkeys(names, 0)
            part = seconds / slices
            cpu_before = cpu_times()
            for _ in range(slices):  # the systems take turns, a slice each
                for name in names:
                    url, headers = targets[name]
                    if kind in ("c", "s"):
                        lat, err = await closed_loop(session, url, headers, int(value), part, stream=kind == "s")
                    else:
                        lat, err = await open_loop(session, url, headers, value, part)
                    latencies[name] += lat
                    errors[name] += err
                    await asyncio.sleep(0.2)
            results[f"{kind}{int(value)}"] = {n: summarize(latencies[n], errors[n]) for n in names}
            results[f"{kind}{int(value)}"]["cpu_steal_pct"] = steal_pct(cpu_before, cpu_times())
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0, help="per load point and system")
    parser.add_argument("--slices", type=int, default=4,
                        help="take each point's time in this many turns per system (each at least 2 s)")
    parser.add_argument("--litellm", default=None, help="litellm executable (default: .venv-litellm/bin/litellm)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even where it is installed")
    parser.add_argument("--floor", action="store_true",
                        help="also measure two minimal pass-through proxies (proxy_floor, proxy_raw)")
    parser.add_argument("--baseline", default=None, help="another checkout whose muxgate runs beside this one")
    parser.add_argument("--rates", default="50,200,500")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--streams", default="8", help="streaming concurrency points; empty for none")
    parser.add_argument("--serve-floor", nargs=3, metavar=("KIND", "PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:  # a child process of --floor
        kind, port, upstream_url = args.serve_floor
        serve_floor(kind, int(port), upstream_url)
        return

    repo = Path(__file__).resolve().parent.parent
    litellm = args.litellm or shutil.which("litellm") or str(repo / ".venv-litellm" / "bin" / "litellm")
    have_litellm = Path(litellm).exists() and not args.no_litellm
    tmp = Path(tempfile.mkdtemp(prefix="mg-overhead-"))
    procs = []
    try:
        up_port, mg_port, ll_port = free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        procs.append(start([sys.executable, "-m", "loadtests.fake_upstream", "--port", str(up_port)], cwd=str(repo)))
        wait_http(upstream + "/models")
        cfg = muxgate_config(upstream, tmp, mg_port)
        procs.append(start([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--no-ray"],
                           cwd=str(repo)))
        wait_http(f"http://127.0.0.1:{mg_port}/healthz")
        targets = {
            "direct": (upstream + "/chat/completions", {}),
            "muxgate": (f"http://127.0.0.1:{mg_port}/v1/chat/completions", {"authorization": f"Bearer {KEY}"}),
        }
        if args.baseline:
            base_port = free_port()
            base_tmp = tmp / "baseline"
            base_tmp.mkdir()
            procs.append(start([sys.executable, "-m", "gateway.cli", "serve", "--config",
                                str(muxgate_config(upstream, base_tmp, base_port)), "--no-ray"], cwd=args.baseline))
            wait_http(f"http://127.0.0.1:{base_port}/healthz")
            targets["muxgate_baseline"] = (f"http://127.0.0.1:{base_port}/v1/chat/completions",
                                           {"authorization": f"Bearer {KEY}"})
        if args.floor:
            for kind, name in (("asgi", "proxy_floor"), ("raw", "proxy_raw")):
                port = free_port()
                procs.append(start([sys.executable, "-m", "loadtests.gateway_overhead", "--serve-floor", kind,
                                    str(port), upstream], cwd=str(repo)))
                wait_http(f"http://127.0.0.1:{port}/v1/models")
                targets[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", {})
        if have_litellm:
            procs.append(start([litellm, "--config", str(litellm_config(upstream, tmp)), "--port", str(ll_port),
                                "--num_workers", "1"], env={"LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"},
                               cwd=str(tmp)))
            wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", timeout=180)
            targets["litellm"] = (f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                                  {"authorization": f"Bearer {LITELLM_KEY}"})
        points = [("c", float(c)) for c in args.concurrency.split(",") if c] + \
                 [("s", float(s)) for s in args.streams.split(",") if s] + \
                 [("r", float(r)) for r in args.rates.split(",") if r]
        slices = max(1, min(args.slices, int(args.seconds // 2)))
        cpu_start = cpu_times()
        results = asyncio.run(measure(targets, points, args.seconds, slices))
        run_steal = steal_pct(cpu_start, cpu_times())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    def added(point, name, q):
        r = results[point]
        if r.get(name, {}).get(q) is None or r["direct"][q] is None:
            return None
        return round(r[name][q] - r["direct"][q], 3)

    ratios = []
    for point, r in results.items():
        for q in ("p50_ms", "p99_ms"):
            r[f"muxgate_added_{q}"] = added(point, "muxgate", q)
            if args.baseline:
                r[f"muxgate_baseline_added_{q}"] = added(point, "muxgate_baseline", q)
            if args.floor:
                for name in ("proxy_floor", "proxy_raw"):
                    r[f"{name}_added_{q}"] = added(point, name, q)
            if have_litellm:
                r[f"litellm_added_{q}"] = added(point, "litellm", q)
                a, b = r[f"muxgate_added_{q}"], r[f"litellm_added_{q}"]
                if a is not None and b:
                    r[f"ratio_vs_litellm_{q}"] = round(max(a, 0.0) / b, 3) if b > 0 else None
                    if r[f"ratio_vs_litellm_{q}"] is not None:
                        ratios.append(r[f"ratio_vs_litellm_{q}"])

    def max_rate(name):
        ok = [int(p[1:]) for p, r in results.items() if p.startswith("r") and r.get(name, {}).get("p99_ms") is not None
              and r[name]["p99_ms"] < 100 and r[name]["errors"] == 0]
        return max(ok) if ok else None

    out = {
        "bench": "gateway_overhead",
        "seconds_per_point": args.seconds,
        "slices": slices,
        "muxgate_added_p50_ms_r200": results.get("r200", {}).get("muxgate_added_p50_ms"),
        "muxgate_added_p99_ms_r200": results.get("r200", {}).get("muxgate_added_p99_ms"),
        "max_ratio_vs_litellm": max(ratios) if ratios else None,
        "max_rate_p99_under_100ms": {n: max_rate(n) for n in ("direct", "muxgate", "litellm") if n != "litellm"
                                     or have_litellm},
        "litellm": have_litellm,
        "baseline": args.baseline,
        "muxgate_baseline_added_p50_ms_r200": results.get("r200", {}).get("muxgate_baseline_added_p50_ms"),
        "muxgate_baseline_added_p99_ms_r200": results.get("r200", {}).get("muxgate_baseline_added_p99_ms"),
        "machine": f"{os.cpu_count()} cores",
        "cpu_steal_pct": run_steal,  # per point too: above a few percent, the numbers are the host's
        "points": results,
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
