"""A burst of malformed requests gets 4xx with OpenAI's error body, never a 5xx, and the models
keep serving (loadtests/chaos_faults.bad_input, the bench's fault run small)."""

from __future__ import annotations

import asyncio


from loadtests.chaos_faults import BAD_INPUT, BAD_INPUT_BUGS, EXTREME_SAMPLING, bad_input


def run(gw, cases):
    report = asyncio.run(bad_input(gw, cases=cases, budget_requests=2))
    return report, report.as_json()


def test_malformed_burst_is_all_4xx_with_openai_bodies(sqlite_gateway):
    report, summary = run(sqlite_gateway, BAD_INPUT)
    assert not report.failures(), report.failures()
    statuses = summary["cases"]
    assert set(statuses) == {c.name for c in BAD_INPUT}
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert statuses["huge_body"] == statuses["huge_body_chunked"] == 413
    assert statuses["missing_key"] == statuses["wrong_key"] == 401
    # the context checks run after admission: those requests are in the ledger, as errors
    assert summary["records_found"] == summary["records_expected"] > 0
    assert summary["budget_hit"] and summary["budget_overshoot"] == 0


def _case(name):
    return next(c for c in BAD_INPUT_BUGS if c.name == name)


def test_deeply_nested_json_is_400(sqlite_gateway):
    report, _ = run(sqlite_gateway, [_case("deeply_nested_json")])
    assert not report.failures(), report.failures()


def test_lone_surrogate_is_400(sqlite_gateway):
    report, _ = run(sqlite_gateway, [_case("lone_surrogate")])
    assert not report.failures(), report.failures()


def test_seed_out_of_range_is_400(sqlite_gateway):
    report, _ = run(sqlite_gateway, [_case("seed_out_of_range")])
    assert not report.failures(), report.failures()


def test_extreme_sampling_values_do_not_break_the_model(sqlite_gateway):
    # runs on mux-5m, which no other test of the shared gateway uses
    report, summary = run(sqlite_gateway, EXTREME_SAMPLING)
    assert summary["checks"]["mux-5m_still_serves"]
    assert not report.failures(), report.failures()
