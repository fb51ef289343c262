"""Tenancy wired together: the store, the ledger buffer, key lookup, admission, the cost model,
and the start-up bootstrap that brings the YAML's teams and keys into the store.

One object per gateway process, built by gateway/http/app.py when `store.url` is set.
"""

from __future__ import annotations

import asyncio

import logging
import os
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from gateway.tenancy.report_session import ReportSessions, session_secret
from gateway.tenancy.admission import StoreAdmission
from gateway.tenancy.auth import read_or_create_secret, resolve_key
from gateway.tenancy.callers import AdminKey, StoreAuthenticator
from gateway.config import AdminConfig, ConfigError, MuxgateConfig, TeamConfig
from gateway.tenancy.costs import CostModel
from gateway.store import Conflict, InvalidInput, LedgerBuffer, Store, StoreError, open_store
from gateway.store.journal import SettlementJournal, journal_directory
from gateway.tenancy.metrics import TenancyMetrics
from gateway.tenancy.ops import TenancyOps

log = logging.getLogger("muxgate.tenancy")

MIN_ADMIN_KEY_LENGTH = 16


def resolve_admin_key(cfg: AdminConfig) -> str | None:
    """The admin key: the environment variable when set, else `key`, else `key_file` (created
    with a random key if missing). None: the admin API is closed to everyone."""
    secret = None
    if cfg.key_env and os.environ.get(cfg.key_env):
        secret = os.environ[cfg.key_env].strip()
    elif cfg.key:
        secret = cfg.key
    elif cfg.key_file:
        secret = read_or_create_secret(cfg.key_file)[0]
    if secret is not None and len(secret) < MIN_ADMIN_KEY_LENGTH:
        raise ConfigError(f"admin: the admin key must be at least {MIN_ADMIN_KEY_LENGTH} characters")
    return secret


def open_configured_store(config: MuxgateConfig) -> Store:
    """The store `store.url` names (the CLI and the gateway open it the same way)."""
    if not config.store.url:
        raise ConfigError("store.url is null: tenancy (teams, keys, budgets, reports) is disabled")
    try:
        return open_store(config.store.url, pepper=os.environ.get(config.store.pepper_env) or None,
                          reservation_ttl_s=config.store.reservation_ttl_s,
                          outcome_retention_s=config.store.outcome_retention_days * 86400,
                          record_retention_s=config.store.usage_record_retention_days * 86400,
                          rollup_retention_s=config.store.usage_rollup_retention_days * 86400)
    except InvalidInput as exc:
        raise ConfigError(f"store.url: {exc}") from None


class Tenancy:
    """Everything tenancy needs in one gateway process."""

    def __init__(self, config: MuxgateConfig, registry: CollectorRegistry,
                 context_length: Callable[[str], Awaitable[int | None]], store: Store | None = None):
        self.config = config
        self.store = store if store is not None else open_configured_store(config)
        admin_secret = resolve_admin_key(config.admin)
        self.admin_key = AdminKey(admin_secret)
        self.report_sessions = ReportSessions(session_secret(admin_secret))
        directory = journal_directory(config.store.journal_dir, self.store)
        self.journal = SettlementJournal(directory) if directory is not None else None
        self.buffer = LedgerBuffer(self.store, max_pending=config.store.ledger_buffer_max, journal=self.journal)
        self.costs = CostModel.from_config(config.pricing)
        self.metrics = TenancyMetrics(registry)
        self.metrics.watch(self.buffer)
        fail_open = config.store.when_unavailable == "open"
        self.authenticator = StoreAuthenticator(self.store, self.admin_key, ttl_s=config.store.auth_cache_ttl_s,
                                                open_grace_s=config.store.open_key_grace_s if fail_open else 0.0)
        self.admission = StoreAdmission(self.store, self.buffer, self.costs, context_length, self.metrics,
                                        fail_open=fail_open)
        self.ops = TenancyOps(self.store)

    async def start(self) -> None:
        """Reach the store and bring the YAML's teams and keys into it; raises if it cannot."""
        try:
            await self.store.ping()
            await bootstrap(self.store, self.config)
        except StoreError as exc:
            raise ConfigError(f"store {self.config.store.url}: {exc}") from exc
        self.buffer.recover()

    async def watch_journal(self) -> None:
        """Apply what gateways that died while this one runs journaled and never applied."""
        while True:
            await asyncio.sleep(self.config.store.journal_recover_interval_s)
            try:
                self.buffer.recover()
            except OSError as exc:
                log.warning("could not look for orphaned journal segments: %s", exc)

    async def caught_up(self) -> None:
        """Wait until what this gateway has answered is in the store (reads after a request see it)."""
        await self.buffer.caught_up()

    async def watch_budgets(self, period_s: float = 5.0) -> None:
        """Export each budgeted team's remaining dollars until cancelled (a scrape never waits on the store)."""
        while True:
            try:
                for team in await self.store.list_teams():
                    if team.budget_usd is not None:
                        spend = await self.store.spend(team.id)
                        self.metrics.budget_remaining.labels(team.id).set(float(spend.remaining_usd or 0))
            except Exception as exc:  # the store may be down; keep the last values
                log.debug("budget gauge not refreshed: %s", exc)
            await asyncio.sleep(period_s)

    async def close(self) -> None:
        """Write buffered usage records (bounded wait), then release the store."""
        lost = await self.buffer.aclose()
        if lost:
            log.error("%d usage records could not be written before shutdown", lost)
        await self.store.close()


# The TeamConfig fields that are the stored team's: one the YAML sets is written to the store at
# every start (the YAML wins over an admin API change), one it leaves out keeps the stored value.
STORED_TEAM_FIELDS = ("name", "budget_usd", "budget_period", "rpm_limit", "tpm_limit", "allowed_models", "share")


async def _ensure_team(store: Store, team: TeamConfig | None, team_id: str) -> None:
    """Create the team when missing; re-apply the fields the YAML sets explicitly."""
    explicit = {} if team is None else {
        name: getattr(team, name) for name in team.model_fields_set if name in STORED_TEAM_FIELDS}
    if await store.get_team(team_id) is None:
        fields = dict(budget_usd=None, budget_period="monthly", rpm_limit=None, tpm_limit=None, allowed_models=(),
                      share=1.0)
        fields.update({k: v for k, v in explicit.items() if k != "name"})
        try:
            await store.create_team(explicit.get("name") or team_id, team_id=team_id, **fields)
            return
        except Conflict:  # another gateway created it at the same moment
            pass
    if explicit:
        if explicit.get("name") is None:
            explicit.pop("name", None)
        await store.update_team(team_id, **explicit)


# The scope a key imported from the YAML carries: the YAML manages it, so one no longer there
# is revoked at the next start (keys made through the admin API never carry it).
CONFIG_SCOPE = "config"


async def bootstrap(store: Store, config: MuxgateConfig) -> None:
    """Create or update the YAML's teams and import its keys (idempotent; safe to run from many
    gateways at once), and revoke the keys an earlier YAML declared that this one does not. A
    key stays revoked once revoked through the admin API."""
    declared = {t.id: t for t in config.teams}
    for team in config.teams:
        await _ensure_team(store, team, team.id)
    current = set()
    for key in config.keys:
        where = f"keys: {key.team}/{key.name}"
        try:
            if key.team not in declared:
                await _ensure_team(store, None, key.team)
            stored = await store.import_key(key.team, resolve_key(key)[0], name=key.name,
                                            scopes=("inference", CONFIG_SCOPE))
            current.add(stored.id)
        except InvalidInput as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except Conflict:
            raise ConfigError(f"{where}: this key is already stored for another team") from None
    for stored in await store.list_keys():
        if CONFIG_SCOPE in stored.scopes and stored.id not in current and stored.revoked_at is None:
            log.warning("key %s (%s/%s) is no longer in the config: revoked", stored.display_prefix,
                        stored.team_id, stored.name)
            await store.revoke_key(stored.id)
