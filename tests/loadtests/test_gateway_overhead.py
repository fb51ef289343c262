"""The gateway-overhead bench's measuring loop, against two real (fake-upstream) servers: every
system gets its requests at every point, and with slices the systems take turns within a point,
so a machine that drifts during the run drifts for all of them."""

import asyncio
import os
import time

import pytest

from loadtests import fake_upstream
from loadtests.gateway_overhead import measure
from support import ServerThread


def _recording(name: str, log: list):
    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            log.append((time.monotonic(), name))
        await fake_upstream.app(scope, receive, send)

    return app


def _turns(log: list) -> int:
    names = [name for _, name in sorted(log)]
    return sum(1 for a, b in zip(names, names[1:]) if a != b)


@pytest.mark.parametrize("slices", [1, 2])
def test_each_system_is_measured_in_turns(slices):
    log: list = []
    with ServerThread(_recording("a", log)) as a, ServerThread(_recording("b", log)) as b:
        targets = {"a": (a.base_url + "/v1/chat/completions", {}), "b": (b.base_url + "/v1/chat/completions", {})}
        results = asyncio.run(measure(targets, [("c", 1.0), ("r", 40.0)], seconds=1.0, slices=slices))
    for point in ("c1", "r40"):
        for name in ("a", "b"):
            assert results[point][name]["errors"] == 0 and results[point][name]["n"] > 0
    assert 36 <= results["r40"]["a"]["n"] <= 40  # the point's whole time, split into slices
    if os.path.exists("/proc/stat"):  # the host's share of the point's CPU time is reported with it
        assert 0.0 <= results["c1"]["cpu_steal_pct"] <= 100.0
    # warm-up a then b; then per point a, b once per slice
    assert _turns(log) == 1 + 2 * 2 * slices
