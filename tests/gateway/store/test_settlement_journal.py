"""SettlementJournal and the LedgerBuffer on top of it: a usage record journaled before the answer
reaches the store right after, survives its gateway being killed (the next one applies it), is
applied once even when replayed, and a live gateway's journal is never taken over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from store_testkit import FlakyStore, acme_reservations, usage_for

from gateway.store import LedgerBuffer
from gateway.store.journal import SettlementJournal, journal_directory

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("settle-*.jsonl"))


async def test_journaled_records_reach_the_store_and_the_segment_is_deleted(backend, tmp_path):
    store = backend.open()
    reservations = await acme_reservations(store, 4)
    journal = SettlementJournal(tmp_path / "j", idle_rotate_bytes=1)
    buffer = LedgerBuffer(store, journal=journal)
    outcomes = []
    for r in reservations:
        assert buffer.record(r, usage_for(r, cost_usd="0.25"), outcomes.append) is True
    assert journal.pending == 4 and len(_segments(tmp_path / "j")) == 1  # durable before the store has it
    await buffer.caught_up()
    assert outcomes == [True] * 4
    assert len(await store.usage_records(0, 2**32)) == 4
    assert journal.pending == 0 and _segments(tmp_path / "j") == []  # all applied: nothing left on disk
    assert await buffer.aclose() == 0


async def test_a_killed_gateways_records_are_applied_once_by_the_next(backend, tmp_path):
    store = backend.open()
    reservations = await acme_reservations(store, 3)
    records = [usage_for(r, cost_usd="0.25") for r in reservations]
    # The first record reached the store before the "kill"; all three are in the dead journal.
    assert await store.settle(reservations[0], records[0]) is True
    dead = SettlementJournal(tmp_path / "j")
    for r, u in zip(reservations, records):
        dead.append(r, u)
    assert dead.close() == 3  # a dying process lets go of its lock without applying

    buffer = LedgerBuffer(store, journal=SettlementJournal(tmp_path / "j"))
    assert buffer.recover() == 3
    await buffer.caught_up()
    ledger = await store.usage_records(0, 2**32)
    assert sorted(u.request_id for u in ledger) == sorted(u.request_id for u in records)  # once each
    assert (await store.spend("acme")).spent_usd == sum(u.cost_usd for u in records)
    assert _segments(tmp_path / "j") == []
    assert buffer.recover() == 0  # nothing is applied twice
    await buffer.aclose()


async def test_records_journaled_during_an_outage_survive_shutdown(backend, tmp_path):
    store = backend.open()
    reservations = await acme_reservations(store, 3)
    down = FlakyStore(store, failures=10**9)
    buffer = LedgerBuffer(down, journal=SettlementJournal(tmp_path / "j"), initial_backoff_s=0.01,
                          max_backoff_s=0.02)
    for r in reservations:
        assert buffer.record(r, usage_for(r)) is True
    await buffer.caught_up()
    assert buffer.pending == 3  # queued in memory, and on disk
    assert await buffer.aclose(timeout_s=0.1) == 0  # not lost: left in the journal
    assert len(_segments(tmp_path / "j")) == 1

    down.failures = 0  # the store is back
    again = LedgerBuffer(store, journal=SettlementJournal(tmp_path / "j"))
    assert again.recover() == 3
    await again.caught_up()
    assert len(await store.usage_records(0, 2**32)) == 3
    await again.aclose()
    assert _segments(tmp_path / "j") == []


async def test_a_torn_last_line_is_skipped_and_the_rest_recovered(backend, tmp_path):
    store = backend.open()
    reservations = await acme_reservations(store, 2)
    dead = SettlementJournal(tmp_path / "j")
    for r in reservations:
        dead.append(r, usage_for(r))
    [segment] = _segments(tmp_path / "j")
    with open(segment, "ab") as f:
        f.write(b'{"reservation": {"id": "trunc')  # killed in the middle of a write
    dead.close()
    buffer = LedgerBuffer(store, journal=SettlementJournal(tmp_path / "j"))
    assert buffer.recover() == 2
    await buffer.caught_up()
    assert len(await store.usage_records(0, 2**32)) == 2
    await buffer.aclose()


def test_a_live_processs_journal_is_never_taken_over(tmp_path):
    """Another OS process holds its segment's lock: recover() leaves it alone until the process
    is SIGKILLed, then takes over every record it journaled."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from gateway.store import Reservation, UsageRecord
        from gateway.store.journal import SettlementJournal
        journal = SettlementJournal({str(tmp_path / "j")!r})
        for i in range(5):
            r = Reservation(id=f"req-{{i}}", team_id="acme", key_id="k1", model="small", cost_usd="0.5",
                            tokens=100, created_at=1.7e9, expires_at=1.7e9 + 600, team_period="total",
                            key_period="total")
            journal.append(r, UsageRecord(request_id=r.id, time=1.7e9, team_id="acme", key_id="k1",
                                          requested_model="small", routed_model="small"))
        print("journaled", flush=True)
        time.sleep(600)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "journaled"
        other = SettlementJournal(tmp_path / "j")
        assert other.recover() == []  # alive: its lock holds
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        entries = other.recover()
        assert sorted(record.request_id for _, record, _ in entries) == [f"req-{i}" for i in range(5)]
        assert other.recover() == []  # taken over once
        for _, _, segment in entries:
            other.release(segment)
        assert _segments(tmp_path / "j") == []
    finally:
        child.kill()
        child.wait()


def test_segments_rotate_and_only_fully_applied_ones_are_deleted(tmp_path):
    from gateway.store import Reservation, UsageRecord

    journal = SettlementJournal(tmp_path / "j", segment_bytes=2000)
    tokens = []
    for i in range(12):
        r = Reservation(id=f"req-{i}", team_id="acme", key_id="k1", model="small", cost_usd="0.5", tokens=10,
                        created_at=1.7e9, expires_at=1.7e9, team_period="total", key_period="total")
        tokens.append(journal.append(r, UsageRecord(request_id=r.id, time=1.7e9, team_id="acme", key_id="k1",
                                                    requested_model="small", routed_model="small")))
    segments = _segments(tmp_path / "j")
    assert len(segments) >= 2  # a full segment is closed for appends and a new one begun
    lines = [json.loads(line) for path in segments for line in path.read_text().splitlines()]
    assert [line["record"]["request_id"] for line in lines] == [f"req-{i}" for i in range(12)]
    first = tokens[0]
    for token in tokens:
        if token is first:
            journal.release(token)
    assert not first.path.exists()  # every entry of the first segment applied: deleted
    assert len(_segments(tmp_path / "j")) == len(segments) - 1
    assert journal.close() == 12 - sum(1 for t in tokens if t is first)  # the rest stay for recovery


def test_each_store_gets_its_own_journal_directory(tmp_path):
    from gateway.store import RedisStore, SQLiteStore

    a, b = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    assert journal_directory(None, a) is None
    assert journal_directory("auto", a).parent == tmp_path / "muxgate-settlements"
    assert journal_directory("auto", a) != journal_directory("auto", b)
    assert journal_directory("/x", a).parent == Path("/x")
    r1, r2 = RedisStore("redis://h:6379/0", prefix="a:"), RedisStore("redis://h:6379/0", prefix="b:")
    assert journal_directory("auto", r1).parent == Path("var/settlements")
    assert journal_directory("auto", r1) != journal_directory("auto", r2)
    assert journal_directory("auto", object()) is None  # nothing to name the store by: no journal


async def test_a_journal_that_cannot_be_written_falls_back_to_settling_first(backend, tmp_path):
    store = backend.open()
    [reservation] = await acme_reservations(store, 1)
    (tmp_path / "not-a-dir").write_text("a file where the journal directory should be")
    buffer = LedgerBuffer(store, journal=SettlementJournal(tmp_path / "not-a-dir" / "j"))
    assert buffer.record(reservation, usage_for(reservation)) is False  # not durable: the caller settles
    assert buffer.journal_errors == 1
    assert await buffer.settle(reservation, usage_for(reservation)) is True
    assert len(await store.usage_records(0, 2**32)) == 1
    await buffer.aclose()
