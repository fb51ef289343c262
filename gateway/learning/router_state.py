"""The router's learned state in the store: loaded when a gateway starts, written every
`store.router_state_save_s` and at shutdown. Gateways sharing a store share one state document
and the last writer wins (each gateway learns from the outcomes it sees; a refit from the store,
`muxgate router fit`, merges what all of them stored).

A refit reaches running gateways two ways: written to the store with a newer `fitted_at`, which
every gateway loads at its next save tick instead of saving over it; or written with `--out DIR`
as a weights directory (the classifier's files and `adaptive_state.json`), which a policy whose
`classifier.weights` names DIR loads when it is (re)loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from gateway.learning.routed_record import policy_router_of
from gateway.store import Store, StoreError

log = logging.getLogger("muxgate.learning")

FITTED_STATE_FILE = "adaptive_state.json"


def state_document(adaptive: dict, fitted_at: float | None) -> dict:
    """What the store (and a fitted weights directory) holds: the state per pair and when it was refitted."""
    return {"adaptive": adaptive, "fitted_at": fitted_at}


def read_fitted(weights_dir: str | None) -> dict | None:
    """The state document a `muxgate router fit --out` wrote into a weights directory, if any."""
    if not weights_dir:
        return None
    path = Path(weights_dir) / FITTED_STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("%s: cannot read the fitted router state: %s", path, exc)
        return None


class RouterStateSync:
    def __init__(self, store: Store, router, period_s: float):
        self.store = store
        self.router = router
        self.period_s = period_s
        self.fitted_at: float | None = None  # of the refit this gateway's state started from
        self._router = None  # the PolicyRouter whose state was last loaded or saved

    def _apply(self, document: dict) -> bool:
        current = policy_router_of(self.router)
        load = getattr(current, "load_adaptive_state", None)
        if load is None or not isinstance(document.get("adaptive"), dict):
            return False
        try:
            load(document["adaptive"])
        except Exception:
            log.exception("the router's stored state could not be loaded; starting from the prior")
            return False
        self.fitted_at = document.get("fitted_at")
        return True

    async def load(self) -> bool:
        """At start: the weights directory's refit if newer, else the store's state."""
        self._router = policy_router_of(self.router)
        stored = await self.store.load_router_state()
        document = None if stored is None else stored[0]
        fitted = read_fitted(self._weights_dir())
        if fitted is not None and (fitted.get("fitted_at") or 0) > ((document or {}).get("fitted_at") or 0):
            document = fitted
        return document is not None and self._apply(document)

    def _weights_dir(self) -> str | None:
        current = policy_router_of(self.router)
        return None if current is None else current.policy.classifier.weights

    async def save(self) -> None:
        current = policy_router_of(self.router)
        state = getattr(current, "adaptive_state", None)
        if state is None:
            return
        adaptive = state()
        if adaptive:
            await self.store.save_router_state(state_document(adaptive, self.fitted_at))

    async def tick(self) -> None:
        """A policy reload brings its weights directory's refit; a newer refit in the store
        replaces what this gateway learnt; otherwise this gateway's state is saved."""
        current = policy_router_of(self.router)
        if current is not self._router:
            self._router = current
            fitted = read_fitted(self._weights_dir())
            if fitted is not None and (fitted.get("fitted_at") or 0) > (self.fitted_at or 0):
                self._apply(fitted)
        stored = await self.store.load_router_state()
        if stored is not None and (stored[0].get("fitted_at") or 0) > (self.fitted_at or 0):
            self._apply(stored[0])
            return
        await self.save()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("router state not saved: %s", exc)
