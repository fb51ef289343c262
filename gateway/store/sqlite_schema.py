"""SQLite connection setup and schema for SQLiteStore.

WAL mode lets readers run while one writer commits; every write is a ``BEGIN IMMEDIATE``
transaction, which takes the file's write lock up front, so concurrent processes queue on the
busy timeout instead of failing half-way with a lock upgrade error.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 4

# Version 3: what routing learns from (gateway/store/outcomes.py). Routed requests are
# team-scoped; their text columns stay NULL unless the team stores prompts.
_OUTCOME_TABLES = """
CREATE TABLE IF NOT EXISTS routed_requests (
    request_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    time REAL NOT NULL,
    pair TEXT NOT NULL,
    routed TEXT NOT NULL,               -- 'small' | 'large'
    model TEXT NOT NULL,
    features BLOB NOT NULL,             -- policies.outcome.encode_features
    messages TEXT,                      -- JSON list, only with store_prompts
    answer TEXT,
    other_answer TEXT                   -- the other tier's, from a shadow evaluation
);
CREATE INDEX IF NOT EXISTS routed_requests_time ON routed_requests (time);
CREATE INDEX IF NOT EXISTS routed_requests_team_time ON routed_requests (team_id, time);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,               -- 'feedback' | 'shadow' | 'replay'
    team_id TEXT NOT NULL,
    pair TEXT NOT NULL,
    routed TEXT NOT NULL,
    small_score REAL,
    large_score REAL,
    features BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (request_id, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outcomes_time ON outcomes (created_at);
CREATE TABLE IF NOT EXISTS router_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,                -- JSON: PolicyRouter.adaptive_state()
    saved_at REAL NOT NULL
);
"""


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


# what takes a file of an older version to the next: version 2 adds the ledger's agent columns,
# version 3 the outcome tables, version 4 the teams' fair-share weight (older teams: equal shares)
_MIGRATIONS = {
    1: ["ALTER TABLE usage_records ADD COLUMN tool_calls INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE usage_records ADD COLUMN constrained TEXT"],
    2: _statements(_OUTCOME_TABLES),
    3: ["ALTER TABLE teams ADD COLUMN share REAL NOT NULL DEFAULT 1.0"],
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    budget_micros INTEGER,
    budget_period TEXT NOT NULL,
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    allowed_models TEXT NOT NULL,       -- JSON list
    created_at REAL NOT NULL,
    share REAL NOT NULL DEFAULT 1.0     -- weight in the replicas' fair queue
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    scopes TEXT NOT NULL,               -- JSON list
    allowed_models TEXT NOT NULL,       -- JSON list
    budget_micros INTEGER,
    budget_period TEXT NOT NULL,
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    replaced_by TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_team ON api_keys (team_id, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_hash ON api_keys (key_hash);  -- imported keys
-- Settled spend per budget period: scope is 'team' or 'key'.
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    period TEXT NOT NULL,
    spent_micros INTEGER NOT NULL,
    PRIMARY KEY (scope, owner_id, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    team_period TEXT NOT NULL,
    key_period TEXT NOT NULL,
    cost_micros INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_team ON reservations (team_id, team_period, expires_at);
CREATE INDEX IF NOT EXISTS reservations_key ON reservations (key_id, key_period, expires_at);
CREATE INDEX IF NOT EXISTS reservations_expiry ON reservations (expires_at);
-- GCRA state per limit: kind is 'rpm' or 'tpm'.
CREATE TABLE IF NOT EXISTS rate_state (
    scope TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    tat_ms REAL NOT NULL,
    PRIMARY KEY (scope, owner_id, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_records (
    request_id TEXT PRIMARY KEY,        -- also the settlement idempotency key
    time REAL NOT NULL,
    team_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    routed_model TEXT NOT NULL,
    route_reason TEXT NOT NULL,
    route_score REAL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    baseline_micros INTEGER NOT NULL,
    gpu_seconds REAL NOT NULL,
    latency_ms REAL,
    ttft_ms REAL,
    status TEXT NOT NULL,
    tool_calls INTEGER NOT NULL DEFAULT 0,
    constrained TEXT
);
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time);
CREATE INDEX IF NOT EXISTS usage_records_team_time ON usage_records (team_id, time);
CREATE TABLE IF NOT EXISTS usage_rollups (
    hour INTEGER NOT NULL,
    team_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    routed_model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    baseline_micros INTEGER NOT NULL,
    gpu_micros INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY (hour, team_id, key_id, requested_model, routed_model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_rollups_team ON usage_rollups (team_id, hour);
""" + _OUTCOME_TABLES


class immediate:
    """A write transaction that holds the database's write lock from its first statement:
    ``with immediate(conn): ...`` commits at the end, rolls back on an error (a class rather
    than a generator context manager: it runs twice on every request's path)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except BaseException:
                self._rollback()
                raise
        self._rollback()
        return False

    def _rollback(self) -> None:
        if self.conn.in_transaction:  # also after a failed COMMIT, so the connection stays usable
            self.conn.execute("ROLLBACK")


def connect(path: str, *, busy_timeout_s: float, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open ``path`` in WAL mode and create or check the schema.

    ``synchronous=NORMAL`` in WAL mode never corrupts the file; a power loss may drop the last
    commits. Pass "FULL" to fsync every commit.
    """
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        with immediate(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{path} has schema version {version}; this muxgate knows {SCHEMA_VERSION}")
            if version == 0:  # a new file: the current schema
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
            else:  # an older muxgate's file: its data kept, its tables brought up to date
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn
