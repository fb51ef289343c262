"""Latency of the complexity classifier on the request path (featurise + score), one core.

    python -m loadtests.route_bench --json [--requests N] [--seed S] [--weights DIR] [--adaptive]

Prompts are built from the in-repo routing sample (policies/data/) with lengths drawn
log-uniformly from 20 to 8,000 characters; a quarter are sent as multi-turn chat ``messages``
with a system prompt, the rest as a single user message. After a warm-up, each request is timed
on its own with perf_counter_ns (wall clock) and thread_time_ns (CPU time of this thread, which
excludes time the core spent on other processes). Prints one JSON line: p50_ms / p99_ms (wall)
overall and per length bucket, cpu_p50_ms / cpu_p99_ms, counts, seed and the machine's load.

--adaptive times what a route with `adapt` does instead (policies/adaptive.py): the features with
the static embedding, then ``use_large`` (adapted score, share controller), on a router that has
learnt from 500 shadow outcomes of the sample.
"""

from __future__ import annotations

import os

# Pin BLAS/OpenMP pools to one thread before numpy is imported: we measure one core.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from policies import routing_data  # noqa: E402
from policies.classifier import ComplexityClassifier  # noqa: E402

MIN_CHARS, MAX_CHARS = 20, 8000
BUCKETS = ((0, 256), (256, 1024), (1024, 4096), (4096, MAX_CHARS + 1))


def build_requests(n: int, seed: int) -> list[tuple[int, dict]]:
    """(length in characters, request kwargs) pairs; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    texts = [ex.text.user for ex in routing_data.load(routing_data.SAMPLE_DATA_DIR)]
    corpus = "\n\n".join(texts)
    requests = []
    for _ in range(n):
        length = int(np.exp(rng.uniform(np.log(MIN_CHARS), np.log(MAX_CHARS))))
        start = int(rng.integers(0, len(corpus) - length))
        text = corpus[start : start + length]
        if rng.random() < 0.25:
            cut = length // 2
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": text[:cut]},
                {"role": "assistant", "content": "Sure. Could you say more?"},
                {"role": "user", "content": text[cut:]},
            ]
        else:
            messages = [{"role": "user", "content": text}]
        requests.append((length, {"messages": messages}))
    return requests


def _adaptive_decider(classifier):
    """``use_large(features)`` of an AdaptiveRouter with the static embedding, after 500 outcomes."""
    from policies.adaptive import AdaptiveRouter
    from policies.embedding import StaticEmbedder
    from policies.outcome import Outcome, encode_features

    router = AdaptiveRouter(classifier, "small->large", target_large_share=0.3, embedder=StaticEmbedder.shipped())
    for i, ex in enumerate(routing_data.load(routing_data.SAMPLE_DATA_DIR)[:500]):
        f = router.features(prompt=ex.text.user)
        router.observe(Outcome(ex.id, "bench", "small->large", "large", ex.small_score, ex.large_score, "replay",
                               encode_features(f), float(i)))

    def decide(messages=None, prompt=None) -> bool:
        return router.use_large(router.features(messages=messages, prompt=prompt))

    return decide


def _percentiles(ns: np.ndarray) -> dict:
    return {
        "n": int(len(ns)),
        "p50_ms": round(float(np.percentile(ns, 50)) / 1e6, 4),
        "p99_ms": round(float(np.percentile(ns, 99)) / 1e6, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.route_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line (the only output format)")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="weights directory (default: shipped)")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (default: first allowed)")
    parser.add_argument("--adaptive", action="store_true", help="time an adaptive route's decision (features + embedding + use_large)")
    args = parser.parse_args(argv)

    pinned = None
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        pinned = args.cpu if args.cpu is not None else allowed[0]
        os.sched_setaffinity(0, {pinned})

    load_started = time.perf_counter()
    classifier = ComplexityClassifier.load(args.weights)
    decide = classifier.score
    if args.adaptive:
        decide = _adaptive_decider(classifier)
    load_ms = (time.perf_counter() - load_started) * 1e3
    requests = build_requests(args.requests + args.warmup, args.seed)
    for _, kwargs in requests[: args.warmup]:
        decide(**kwargs)

    lengths, elapsed, cpu = [], [], []
    for length, kwargs in requests[args.warmup :]:
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        score = decide(**kwargs)
        elapsed.append(time.perf_counter_ns() - t0)
        cpu.append(time.thread_time_ns() - c0)
        lengths.append(length)
        assert isinstance(score, bool) or 0.0 <= score <= 1.0
    lengths_a, ns, cpu_ns = np.array(lengths), np.array(elapsed, dtype=np.float64), np.array(cpu, dtype=np.float64)

    result = {
        "bench": "route_adaptive_latency" if args.adaptive else "route_classifier_latency",
        "seed": args.seed,
        "requests": len(ns),
        "warmup": args.warmup,
        "chars_min": int(lengths_a.min()),
        "chars_max": int(lengths_a.max()),
        **_percentiles(ns),
        "max_ms": round(float(ns.max()) / 1e6, 4),
        # CPU time of the scoring thread: what the request costs on an otherwise idle core.
        # Wall-clock p99 also counts time the OS gave the core to other processes.
        "cpu_p50_ms": round(float(np.percentile(cpu_ns, 50)) / 1e6, 4),
        "cpu_p99_ms": round(float(np.percentile(cpu_ns, 99)) / 1e6, 4),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpus_online": os.cpu_count(),
        "by_chars": {
            f"{lo}-{hi - 1}": _percentiles(ns[(lengths_a >= lo) & (lengths_a < hi)]) for lo, hi in BUCKETS
        },
        "cpu": pinned,
        "load_ms": round(load_ms, 1),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
