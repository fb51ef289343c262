"""SettlementJournal: a request's usage record is durable on local disk before its client is answered.

Settling in the store (a SQLite transaction of five statements, a Redis script) costs a few hundred
microseconds on the request's path; appending one line to a local file costs about ten. So the
gateway appends the record here, answers, and applies the record to the store right after
(gateway/store/buffer.py). A gateway killed in between loses nothing: the next gateway to start
with the same directory (or a running one, on its periodic look) applies whatever was journaled
and not yet applied. Settle is idempotent per request id, so an entry that reached the store just
before the kill is not counted twice. Durability is the page cache's, like SQLite's WAL at
``synchronous=NORMAL``: it survives the process, not the machine losing power.

Files: each process writes its own segments, ``<dir>/settle-<pid>-<random>-<n>.jsonl``, one JSON
line per record, and holds an exclusive ``flock`` on each until every entry in it has been applied
(or handed back at shutdown); then it deletes it. A segment no live process holds is an orphan:
``recover()`` takes it over (keeps its lock) and hands back its entries to be applied.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, fields
from decimal import Decimal
from operator import attrgetter
from pathlib import Path

from gateway.store.records import Reservation, UsageRecord

log = logging.getLogger("muxgate.store.journal")

PATTERN = "settle-*.jsonl"
SEGMENT_BYTES = 4 << 20  # a segment is closed for appends at this size
IDLE_ROTATE_BYTES = 64 << 10  # ...or, once at least this big, as soon as everything in it is applied


@dataclass(eq=False)
class Segment:
    """One journal file this process holds (and its lock): the token of the entries in it."""

    path: Path
    fd: int
    size: int = 0
    pending: int = 0  # entries appended (or recovered) and not yet applied
    sealed: bool = False  # no more appends; deleted when pending reaches 0


def journal_directory(setting: str | None, store: object) -> Path | None:
    """Where ``store``'s journal lives for the `store.journal_dir` setting: None (off); "auto"
    (beside a SQLite file, else ``var/settlements``); or a directory. Always a subdirectory
    named after the store, so entries recovered from it are applied to the store they belong
    to. None, too, for a store that has neither a file nor a URL to name it by."""
    if setting is None:
        return None
    path, url = getattr(store, "path", None), getattr(store, "url", None)
    if path is not None:
        identity = "sqlite:" + str(Path(path).resolve())
        default = Path(path).resolve().parent / "muxgate-settlements"
    elif url is not None:
        identity = f"{url}|{getattr(store, 'prefix', '')}"
        default = Path("var/settlements")
    else:
        return None
    base = default if setting == "auto" else Path(setting)
    return base / hashlib.sha256(identity.encode()).hexdigest()[:16]


_RESERVATION_FIELDS = tuple(f.name for f in fields(Reservation))
_reservation_values = attrgetter(*_RESERVATION_FIELDS)
_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode  # default: Decimal money as text


def encode(reservation: Reservation, record: UsageRecord) -> bytes:
    """One journal line. Field by field rather than dataclasses.asdict, which deep-copies and
    cost several times more on the request's path."""
    return _dumps({"reservation": dict(zip(_RESERVATION_FIELDS, _reservation_values(reservation))),
                   "record": record.to_json_dict()}).encode() + b"\n"


def decode(line: bytes) -> tuple[Reservation, UsageRecord]:
    data = json.loads(line)
    res = data["reservation"]
    reservation = Reservation(**{**res, "cost_usd": Decimal(res["cost_usd"])})
    return reservation, UsageRecord.from_json_dict(data["record"])


class SettlementJournal:
    """This process's segments in ``directory``. Not thread-safe: the gateway's event loop owns it."""

    def __init__(self, directory: str | Path, segment_bytes: int = SEGMENT_BYTES,
                 idle_rotate_bytes: int = IDLE_ROTATE_BYTES):
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._idle_rotate_bytes = idle_rotate_bytes
        self._prefix = f"settle-{os.getpid()}-{secrets.token_hex(4)}"
        self._sequence = 0
        self._current: Segment | None = None
        self._held: set[Segment] = set()
        self.appended = 0  # cumulative, for metrics
        self.recovered = 0

    @property
    def pending(self) -> int:
        """Entries on disk not yet applied to the store."""
        return sum(s.pending for s in self._held)

    def append(self, reservation: Reservation, record: UsageRecord) -> Segment:
        """Make one settlement durable; returns the token to :meth:`release` once it is applied.
        Raises OSError when the file cannot be written (the caller then settles synchronously)."""
        line = encode(reservation, record)
        segment = self._current or self._open_segment()
        try:
            written = os.write(segment.fd, line)  # O_APPEND: one write, one line
            while written < len(line):  # a short write (disk nearly full): finish the line
                written += os.write(segment.fd, line[written:])
        except OSError:
            # a torn line may be on disk: never append after it (recovery skips it)
            segment.sealed = True
            self._current = None
            self._drop_if_done(segment)
            raise
        segment.size += len(line)
        segment.pending += 1
        self.appended += 1
        if segment.size >= self._segment_bytes:
            segment.sealed = True
            self._current = None
        return segment

    def release(self, segment: Segment) -> None:
        """One entry of ``segment`` reached the store (or was settled before): forget it."""
        segment.pending -= 1
        if segment.pending == 0 and not segment.sealed and segment.size >= self._idle_rotate_bytes:
            segment.sealed = True  # everything in it is applied: start a fresh file next time
            if self._current is segment:
                self._current = None
        self._drop_if_done(segment)

    def recover(self) -> list[tuple[Reservation, UsageRecord, Segment]]:
        """Take over every segment no live process holds; its entries, to be applied and then
        released like this process's own. Lines that do not decode (a torn last write) are
        logged and skipped."""
        entries: list[tuple[Reservation, UsageRecord, Segment]] = []
        if not self.directory.is_dir():
            return entries
        mine = {s.path for s in self._held}
        for path in sorted(self.directory.glob(PATTERN)):
            if path in mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # its owner finished with it just now
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live gateway's
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:  # deleted (all applied) between the glob and the lock
                os.close(fd)
                continue
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            segment = Segment(path, fd, size=len(data), sealed=True)
            for number, line in enumerate(data.splitlines(), start=1):
                try:
                    reservation, record = decode(line)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("journal %s line %d skipped (%s)", path.name, number, exc)
                    continue
                segment.pending += 1
                entries.append((reservation, record, segment))
            self._held.add(segment)
            self._drop_if_done(segment)
        self.recovered += len(entries)
        if entries:
            log.warning("recovered %d usage records journaled and never applied (%s)", len(entries),
                        self.directory)
        return entries

    def close(self) -> int:
        """Delete the segments whose entries are all applied and let go of the rest (they stay
        on disk for the next gateway to recover). Returns how many entries were left."""
        left = 0
        for segment in list(self._held):
            if segment.pending == 0:
                self._delete(segment)
            else:
                left += segment.pending
                self._held.discard(segment)
                os.close(segment.fd)  # releases the lock: an orphan now
        self._current = None
        with contextlib.suppress(OSError):  # only when empty: other gateways' segments stay
            self.directory.rmdir()
        return left

    def _open_segment(self) -> Segment:
        self._sequence += 1
        name = f"{self._prefix}-{self._sequence}.jsonl"
        # Created and locked under a name recover() does not look at, then renamed: another
        # gateway's recover() can never lock (and take over) a segment between its creation
        # and this process's lock.
        temporary = self.directory / f".{name}.new"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        try:
            fd = os.open(temporary, flags, 0o600)
        except FileNotFoundError:  # first use, or another gateway just removed the empty directory
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.directory / name
            os.rename(temporary, path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        segment = self._current = Segment(path, fd)
        self._held.add(segment)
        return segment

    def _drop_if_done(self, segment: Segment) -> None:
        if segment.sealed and segment.pending == 0:
            self._delete(segment)

    def _delete(self, segment: Segment) -> None:
        # unlink before close: the lock is held until the name is gone, so recover() in another
        # process either fails to lock it or finds it unlinked
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        os.close(segment.fd)
        self._held.discard(segment)
        if self._current is segment:
            self._current = None
