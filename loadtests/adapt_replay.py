"""A replay of routing data through a real muxgate server with an adaptive route (issue 18): does
the live `large_share` hold its target (±2 points), and what quality do the routed answers get?

Each row's prompt is sent as `model: auto` through uvicorn and the gateway's whole request path
(auth, routing, admission, settlement, recording). The two tiers are scripted models whose
answer is the row's score for that tier, and a scripted judge model compares the two answers as a
pairwise judge would ([[A]], [[B]] or [[tie]]), so shadow evaluation (`--shadow` share) labels
the router from the gateway's own traffic exactly as in production; `--feedback` also posts the
routed tier's score to POST /v1/feedback. Prints one JSON line: the realised large share overall
and over rolling windows of the route's window (max deviation from the target after the first
window), the mean quality of the answers served against random routing at the same share and
against the per-row oracle, and the router's own status.
Usage: python -m loadtests.adapt_replay --data ../shared/data/routing/gsm8k.jsonl --json
       [--rows 3000] [--target 0.3] [--window 500] [--shadow 0.2] [--feedback] [--seed 0] [--shipped]
--shipped replays the same rows through the shipped classifier alone (its threshold calibrated for
the target share on the training mix), the system the adaptive route is compared with.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
import yaml

from workers.types import GenerationChunk, ModelInfo

KEY = "mg-replay-0123456789abcdef0123456789"
SMALL, LARGE, JUDGE = "replay-small", "replay-large", "replay-judge"


def load_rows(path: str, n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = [r for r in rows if r.get("prompt")]
    random.Random(seed).shuffle(rows)
    return rows[:n]


class ReplayBackend:
    """The two tiers answer a row's score for them; the judge says which of two answers is higher."""

    def __init__(self, rows: list[dict]):
        self.scores = {r["prompt"]: (float(r["small_score"]), float(r["large_score"])) for r in rows}

    async def generate(self, model, req):
        if model == JUDGE:
            prompt = req.messages[-1]["content"]
            a, b = (float(x) for x in re.findall(r"\[Answer [AB]\]\n([0-9.]+)", prompt))
            text = "[[tie]]" if a == b else ("[[A]]" if a > b else "[[B]]")
        else:
            small, large = self.scores[req.messages[-1]["content"]]
            text = repr(large if model == LARGE else small)
        yield GenerationChunk(text=text, finish_reason="stop", prompt_tokens=8, completion_tokens=2)

    async def models(self):
        return [ModelInfo(m, 32768, 0, 0) for m in (SMALL, LARGE, JUDGE)]

    async def stats(self):
        return []

    async def close(self):
        pass


def config(tmp: Path, target: float, window: int, shadow: float, seed: int, adapt: bool = True) -> dict:
    policy = tmp / "routing.yaml"
    route = {"large_share": target, "budget_downgrade_at": None}
    if adapt:
        route["adapt"] = {"window": window}
    policy.write_text(yaml.safe_dump({"version": 1, "tiers": {"small": [SMALL], "large": [LARGE]},
                                      "routes": {"default": route}}))
    routing = {"default_model": SMALL, "policy_file": str(policy)}
    if shadow > 0:
        routing["shadow"] = {"share": shadow, "budget": "evals", "judge": {"model": JUDGE}, "seed": seed,
                             "max_queued": 100_000}
    unused = {"base_url": "http://127.0.0.1:9/v1", "model": "x"}  # the replay backend serves them
    return {"version": 1, "server": {"default_max_tokens": 4, "auth_failures_per_minute": 0},
            "keys": [{"team": "replay", "name": "replay", "key": KEY}],
            "teams": [{"id": "replay"}, {"id": "evals"}],
            "store": {"url": f"sqlite:///{tmp / 'replay.db'}", "router_state_save_s": 3600},
            "admin": {"key": "mg-replay-admin-0123456789abcdef"},
            "models": [{"name": m, "upstream": unused} for m in (SMALL, LARGE, JUDGE)],
            "routing": routing}


class Server:
    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def rolling_max_deviation(large: np.ndarray, window: int, target: float) -> float | None:
    if len(large) < 2 * window:
        return None
    sums = np.convolve(large.astype(float), np.ones(window), "valid") / window
    return round(float(np.max(np.abs(sums[window:] - target))), 4)  # after the first window


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--shadow", type=float, default=0.2)
    parser.add_argument("--feedback", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shipped", action="store_true",
                        help="the shipped classifier alone (no adapt: its calibrated threshold for the target)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from gateway.http.app import create_app
    from gateway.config import parse_config

    rows = load_rows(args.data, args.rows, args.seed)
    with tempfile.TemporaryDirectory(prefix="mg-replay-") as tmp:
        cfg = parse_config(config(Path(tmp), args.target, args.window, args.shadow, args.seed, not args.shipped))
        app = create_app(cfg, ReplayBackend(rows))
        gateway = app.state.gateway
        large, served, small_scores, large_scores = [], [], [], []
        started = time.perf_counter()
        with Server(app) as server, httpx.Client(base_url=server.url, timeout=60,
                                                  headers={"Authorization": f"Bearer {KEY}"}) as client:
            for row in rows:
                resp = client.post("/v1/chat/completions", json={
                    "model": "auto", "messages": [{"role": "user", "content": row["prompt"]}]})
                resp.raise_for_status()
                is_large = resp.headers["x-muxgate-model"] == LARGE
                large.append(is_large)
                small, big = float(row["small_score"]), float(row["large_score"])
                small_scores.append(small)
                large_scores.append(big)
                served.append(big if is_large else small)
                if args.feedback:
                    client.post("/v1/feedback", json={"request_id": resp.json()["id"],
                                                      "score": big if is_large else small})
            wall = time.perf_counter() - started
            shadow = gateway.learning.shadow
            time.sleep(1.0)  # the recorder writes in batches (50 ms); shadow work is submitted after
            deadline = time.time() + 600
            while shadow is not None and time.time() < deadline and shadow.counts["submitted"] > sum(
                    shadow.counts[k] for k in ("evaluated", "refused", "failed", "unjudged")):
                time.sleep(0.1)  # the last shadow evaluations finish (they run after each answer)
            status = gateway.router.current.adaptive_status() if not args.shipped else {}
            counts = dict(shadow.counts) if shadow is not None else {}
    large_arr = np.asarray(large)
    s, l, q = np.asarray(small_scores), np.asarray(large_scores), np.asarray(served)
    share = float(large_arr.mean())
    out = {
        "bench": "adapt_replay", "data": args.data, "rows": len(rows), "target_large_share": args.target,
        "router_kind": "shipped" if args.shipped else "adaptive", "window": args.window, "shadow_share": args.shadow, "feedback": args.feedback, "seed": args.seed,
        "large_share": round(share, 4),
        "large_share_last_window": round(float(large_arr[-args.window:].mean()), 4),
        "max_window_deviation": rolling_max_deviation(large_arr, args.window, args.target),
        "served_quality": round(float(q.mean()), 4),
        "random_quality_same_share": round(float(s.mean() + share * (l.mean() - s.mean())), 4),
        "oracle_quality": round(float(np.maximum(s, l).mean()), 4),
        "small_quality": round(float(s.mean()), 4), "large_quality": round(float(l.mean()), 4),
        "requests_per_s": round(len(rows) / wall, 1), "shadow": counts,
        "router": {pair: {k: v for k, v in st.items() if k in ("labels_seen", "large_share", "apgr_estimate",
                                                                  "apgr_ci", "threshold")}
                   for pair, st in status.items()},
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
