"""RedisStore's part of the Store protocol for routing outcomes (gateway/store/outcomes.py).

Each routed request and each outcome is one JSON string that expires after the store's
``outcome_retention_s`` (default 90 days; `store.outcome_retention_days`), indexed by time in a
sorted set that is trimmed to the same window on every write. The router's state is one key
without expiry. None of this is on the request path: the gateway writes it after the answer.
"""

from __future__ import annotations

import json

from policies.outcome import Outcome
from gateway.store.outcomes import (
    RoutedRequest,
    check_outcome,
    check_state,
    outcome_from_json,
    outcome_to_json,
)
from gateway.store.validation import check_count, to_epoch

_SEP = "\x1f"
DEFAULT_OUTCOME_RETENTION_S = 90 * 86400.0


class RedisOutcomes:
    """Mixed into RedisStore (uses its ``_redis``, ``_k``, ``_errors`` and ``_clock``)."""

    outcome_retention_s: float = DEFAULT_OUTCOME_RETENTION_S

    def _ttl(self) -> int:
        return max(1, int(self.outcome_retention_s))

    def _trim(self, pipe, index: str) -> None:
        """Drop index entries older than the retention (their documents have expired)."""
        pipe.zremrangebyscore(index, "-inf", f"({self._clock() - self.outcome_retention_s!r}")
        pipe.expire(index, self._ttl())

    async def record_routed(self, request: RoutedRequest) -> bool:
        return await self.record_routed_many([request]) == 1

    async def record_routed_many(self, requests: list[RoutedRequest]) -> int:
        if not requests:
            return 0
        async with self._errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in requests:
                    pipe.set(self._k("routed", r.request_id), json.dumps(r.to_json_dict()), nx=True, ex=self._ttl())
                created = await pipe.execute()
            new = [r for r, ok in zip(requests, created, strict=True) if ok]
            if new:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for r in new:
                        pipe.zadd(self._k("routed_index"), {r.request_id: r.time})
                        pipe.zadd(self._k("routed_index", "team", r.team_id), {r.request_id: r.time})
                    for index in {self._k("routed_index")} | {self._k("routed_index", "team", r.team_id) for r in new}:
                        self._trim(pipe, index)
                    await pipe.execute()
        return len(new)

    async def routed_request(self, team_id: str, request_id: str) -> RoutedRequest | None:
        async with self._errors():
            doc = await self._redis.get(self._k("routed", request_id))
        if doc is None:
            return None
        request = RoutedRequest.from_json_dict(json.loads(doc))
        return request if request.team_id == team_id else None

    async def set_other_answer(self, team_id: str, request_id: str, answer: str) -> bool:
        request = await self.routed_request(team_id, request_id)
        if request is None:
            return False
        data = {**request.to_json_dict(), "other_answer": answer}
        async with self._errors():
            return bool(await self._redis.set(self._k("routed", request_id), json.dumps(data), xx=True,
                                              keepttl=True))

    async def routed_requests(self, start, end, *, team_id: str | None = None,
                              limit: int = 1000) -> list[RoutedRequest]:
        limit = check_count(limit, "limit")
        index = self._k("routed_index") if team_id is None else self._k("routed_index", "team", team_id)
        async with self._errors():
            ids = await self._redis.zrangebyscore(index, repr(to_epoch(start)), f"({to_epoch(end)!r}",
                                                  start=0, num=int(limit))
            docs = await self._redis.mget([self._k("routed", rid) for rid in ids]) if ids else []
        return [RoutedRequest.from_json_dict(json.loads(d)) for d in docs if d]

    async def record_outcome(self, outcome: Outcome) -> None:
        o = check_outcome(outcome)
        member = o.request_id + _SEP + o.source
        async with self._errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._k("outcome", o.request_id, o.source), outcome_to_json(o), ex=self._ttl())
                pipe.zadd(self._k("outcome_index"), {member: o.created_at})
                self._trim(pipe, self._k("outcome_index"))
                await pipe.execute()

    async def outcomes(self, start, end, *, team_id: str | None = None, pair: str | None = None,
                       limit: int = 100_000) -> list[Outcome]:
        limit = check_count(limit, "limit")
        out: list[Outcome] = []
        offset, page = 0, 1000
        async with self._errors():
            while len(out) < limit:
                members = await self._redis.zrangebyscore(
                    self._k("outcome_index"), repr(to_epoch(start)), f"({to_epoch(end)!r}", start=offset, num=page)
                if not members:
                    break
                offset += len(members)
                docs = await self._redis.mget([self._k("outcome", *m.split(_SEP, 1)) for m in members])
                for doc in docs:
                    if doc is None:
                        continue
                    o = outcome_from_json(doc)
                    if (team_id is None or o.team == team_id) and (pair is None or o.pair == pair):
                        out.append(o)
        return out[:limit]

    async def save_router_state(self, state: dict) -> None:
        text = check_state(state)
        async with self._errors():
            await self._redis.set(self._k("router_state"),
                                  json.dumps({"state": text, "saved_at": self._clock()}))

    async def load_router_state(self) -> tuple[dict, float] | None:
        async with self._errors():
            doc = await self._redis.get(self._k("router_state"))
        if doc is None:
            return None
        data = json.loads(doc)
        return json.loads(data["state"]), float(data["saved_at"])
