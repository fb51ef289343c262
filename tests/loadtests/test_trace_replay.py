"""The trace replayer drives a real gateway end to end: singles and dependent agent chains."""

import argparse
import asyncio

from loadtests.trace_replay import arrivals, run
from support import KEY_ALPHA


def test_replay_against_a_real_gateway_completes_every_call(gateway):
    args = argparse.Namespace(url=gateway.base_url, key=KEY_ALPHA, requests=6, rate=20.0, bursty=True,
                              chain_share=0.5, model="zipf", max_tokens=2, seed=1)
    out = asyncio.run(run(args))
    assert out["failed"] == 0 and out["limited_429"] == 0
    assert out["ok"] == out["requests"] >= 6
    assert out["chain_calls"] >= 3
    assert out["ttft_p50_s"] is not None


def test_arrivals_are_seeded_and_sorted():
    import random

    a = arrivals(random.Random(3), 50, 5.0, bursty=True)
    assert a == arrivals(random.Random(3), 50, 5.0, bursty=True)
    assert a == sorted(a) and len(a) == 50
