"""The pool's Ray Serve replica killed mid-stream on a real local Ray: an in-band error event
for the stream, its usage recorded with the tokens it got, a new replica, later requests served
(loadtests/chaos_ray.replica_killed)."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.ray


def test_replica_killed_mid_stream(zoo_dir, tmp_path):
    pytest.importorskip("ray.serve")
    from loadtests.chaos_ray import replica_killed

    report = asyncio.run(replica_killed(zoo_dir, tmp_path, workers=2, before=2, budget_requests=6))
    summary = report.as_json()
    assert not report.failures(), report.failures()
    checks = summary["checks"]
    assert checks["stream_ends_with_in_band_error"] and checks["killed_stream_recorded_with_tokens_served"]
    assert checks["serve_started_a_new_replica"] and checks["later_requests_succeed"]
    assert summary["records_found"] == summary["records_expected"]
    assert summary["budget_overshoot"] == 0
