"""Models that cannot load (a corrupt checkpoint, a truncated one, one larger than the device
budget) get a clear 503 naming the model and the reason; the pool stays healthy and the other
models keep serving (loadtests/chaos_faults.model_load_fails)."""

from __future__ import annotations

import asyncio

from loadtests.chaos_faults import model_load_fails


def test_models_that_cannot_load_get_503_and_the_pool_stays_healthy(sqlite_gateway):
    report = asyncio.run(model_load_fails(sqlite_gateway, rounds=2, good_per_round=2, budget_requests=3))
    summary = report.as_json()
    assert not report.failures(), report.failures()
    assert summary["unclean"] == 0
    assert summary["records_found"] == summary["records_expected"]  # the 503s were admitted: recorded too
    assert summary["budget_hit"] and summary["budget_overshoot"] == 0
    assert "device budget" in summary["messages"]["oversized"]
    assert "cannot read checkpoint" in summary["messages"]["broken-header"]
