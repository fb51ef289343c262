"""The upstream-client bench measures both clients on the same answers (a bench whose clients
read nothing would report a meaningless ratio)."""

import asyncio

from loadtests import fake_upstream
from loadtests.upstream_client_bench import measure
from support import ServerThread


def test_both_clients_are_measured_reading_whole_answers():
    with ServerThread(fake_upstream.app) as upstream:
        result = asyncio.run(measure(upstream.base_url + "/v1", calls=5, rounds=2))
    for name in ("muxgate_client", "aiohttp"):
        assert result[name]["cpu_us_per_call"] > 0 and result[name]["wall_us_per_call"] > 0
    assert result["cpu_ratio_muxgate_vs_aiohttp"] > 0
