"""Persistence for teams, keys, admission and usage: one protocol, two backends.

    store = open_store("sqlite:///var/muxgate.db")      # embedded default
    store = open_store("redis://redis:6379/0")          # shared by many gateways
"""

from gateway.store.buffer import LedgerBuffer
from gateway.store.errors import Conflict, InvalidInput, NotFound, StoreError, StoreUnavailable
from gateway.store.factory import open_store
from gateway.store.outcomes import RoutedRequest
from gateway.store.protocol import Store
from gateway.store.records import (
    DENIAL_LIMITS,
    UNSET,
    ApiKey,
    CreatedKey,
    Denial,
    Principal,
    Reservation,
    Spend,
    Team,
    UsageRecord,
    UsageRow,
)
from gateway.store.redis_store import RedisStore
from gateway.store.reports import GROUP_BY_FIELDS
from gateway.store.sqlite_store import SQLiteStore

__all__ = [
    "DENIAL_LIMITS", "GROUP_BY_FIELDS", "UNSET", "ApiKey", "Conflict", "CreatedKey", "Denial",
    "InvalidInput", "LedgerBuffer", "NotFound", "Principal", "RedisStore", "Reservation", "RoutedRequest",
    "SQLiteStore", "Spend", "Store", "StoreError", "StoreUnavailable", "Team", "UsageRecord",
    "UsageRow", "open_store",
]
