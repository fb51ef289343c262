"""Routing policies in YAML: tiers of models, routes (per team) that choose a tier for `model:
auto` from the complexity classifier, a cost target, the team's budget and the pool's load.

Validated once when loaded (pydantic, unknown keys are errors, messages name the file and the key
path); a policy that names models the gateway does not serve is refused as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from policies.schema import Strict, read_yaml, validation_lines


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file and the key path."""


class CapacityPolicy(Strict):
    max_queue_depth: int = Field(
        8, ge=0, description="Requests waiting for the large model (pool queue depth) above which it counts as saturated.")
    on_saturated: Literal["fallback", "queue"] = Field(
        "fallback", description="`fallback`: send the request to the small tier instead; `queue`: wait for the large model.")


class SpeculativePolicy(Strict):
    drafts: dict[str, str] = Field(
        description="Served model -> the pool model that drafts for it. The draft must share the served model's "
        "tokenizer (checked when both are loaded; otherwise the request decodes without it). Applies to greedy "
        "(temperature 0) requests; their answers are exactly the served model's.")
    draft_tokens: int = Field(4, ge=1, le=16, description="Tokens the draft proposes per step of the served model.")

    @model_validator(mode="after")
    def _no_self_drafts(self):
        same = sorted(m for m, d in self.drafts.items() if m == d)
        if same:
            raise ValueError(f"a model cannot draft for itself: {', '.join(same)}")
        return self


class AdaptPolicy(Strict):
    explore: float = Field(
        0.0, ge=0, le=0.5, description="Share of this route's classifier decisions made at random (at the route's "
        "`large_share`), so that feedback, which scores only the model that answered, also shows how the other tier "
        "does on each kind of request. Not needed when shadow evaluation scores both tiers.")
    embedding: bool = Field(
        True, description="Also learn on a static sentence embedding of the prompt (policies/embedding.py, "
        "all-MiniLM-L6-v2 distilled into a word table): labels carry further across topics.")
    window: int = Field(1000, ge=50, le=100_000, description="Requests over which `large_share` is held on target.")


class RoutePolicy(Strict):
    strategy: Literal["classifier", "fixed"] = Field(
        "classifier", description="`classifier`: the complexity classifier picks small or large; `fixed`: always `model`.")
    model: str | None = Field(None, description="With strategy `fixed`: the model every `auto` request of this route gets.")
    small: str = Field("small", description="Tier used when the classifier says the small model will do.")
    large: str = Field("large", description="Tier used when the classifier says the large model is needed.")
    large_share: float | None = Field(
        None, gt=0, lt=1, description="Target share of requests sent to the large tier; the threshold is calibrated on "
        "held-out data so this share holds on traffic like it.")
    quality_target: float | None = Field(
        None, gt=0, le=1, description="Alternatively: the share of the small-to-large quality gap to recover (PGR); "
        "the threshold is the cheapest that reaches it on held-out data.")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Alternatively: a raw threshold on P(large needed).")
    budget_downgrade_at: float | None = Field(
        0.9, gt=0, le=1, description="When a team has spent this fraction of its budget, its `auto` requests go to the small tier.")
    capacity: CapacityPolicy = Field(default_factory=CapacityPolicy, description="What to do when the large tier is saturated.")
    fallbacks: list[str] = Field(
        default_factory=list, description="Models tried in order when the chosen one fails before its first token "
        "(after the other tier's first model).")
    session_affinity: bool = Field(
        True, description="Requests with the same `x-session-id` keep the model their session started on (agent chains).")
    tools_tier: str | None = Field(
        None, description="Tier for `auto` requests that offer the model tools (an agent's step: `tools` with a "
        "`tool_choice` other than `none`), whatever the classifier says: calling tools well takes a capable model, "
        "and a prompt full of tool schemas tells the classifier little. The budget and capacity downgrades still apply. "
        "Unset: such requests are routed like any other.")
    structured_tier: str | None = Field(
        None, description="Tier for `auto` requests with a `response_format` (json_object or json_schema), "
        "when `tools_tier` does not apply. Unset: routed like any other.")
    adapt: AdaptPolicy | bool = Field(
        False, description="Learn this deployment's own pair from its outcomes (feedback, shadow evaluation): "
        "`true` or settings. The shipped classifier is the prior; each outcome of the route's pair (its small "
        "tier's first model -> its large tier's first model) updates a per-pair model of both tiers' scores "
        "(policies/adaptive.py), and `auto` follows the adapted score with `large_share` held on target over a "
        "rolling window (±2 points). The rules (tiers, downgrades, affinity) still apply; with strategy "
        "`classifier` only.")
    speculative: SpeculativePolicy | None = Field(
        None, description="Opt-in speculative decoding for this route's requests (`auto` and explicit models alike): "
        "a small model drafts tokens that the served model verifies several at a time.")
    priority: int = Field(
        0, ge=-3, le=3, strict=True, description="Share multiplier for this route's requests (`auto` and explicit models alike) "
        "in each pool replica's fair queue: their weight there is the team's `share` times 2**priority, so 1 has "
        "them admitted twice as often as at 0 while other requests wait too, -1 half as often. A share, not a "
        "strict level: lower-priority requests are still served, only less often. The queue's bound "
        "(`pool.max_queued_requests`) is shared by `share` alone; requests to remote (upstream) models ignore it.")

    @property
    def adaptation(self) -> AdaptPolicy | None:
        """The adaptation settings, or None when the route does not adapt."""
        if self.adapt is True:
            return AdaptPolicy()
        return self.adapt or None

    @model_validator(mode="after")
    def _one_target(self):
        if self.strategy == "fixed":
            if not self.model:
                raise ValueError("strategy `fixed` needs `model`")
            if self.adaptation is not None:
                raise ValueError("`adapt` needs strategy `classifier`: a fixed route has nothing to learn")
            return self
        targets = [t for t in ("large_share", "quality_target", "threshold") if getattr(self, t) is not None]
        if len(targets) > 1:
            raise ValueError(f"give one of large_share, quality_target, threshold (got {', '.join(targets)})")
        return self


class TeamPolicy(Strict):
    route: str = Field(description="Name of the route (under `routes`) this team's `auto` requests use.")


class ClassifierSettings(Strict):
    weights: str | None = Field(None, description="Directory of classifier weights; default: the ones shipped in policies/weights.")


class Policy(Strict):
    version: Literal[1] = Field(description="Schema version of this file.")
    tiers: dict[str, list[str]] = Field(
        description="Tier name -> models in order of preference (the first that is allowed and healthy is used).")
    routes: dict[str, RoutePolicy] = Field(description="Named routes.")
    default_route: str = Field("default", description="Route for teams not listed under `teams`.")
    teams: dict[str, TeamPolicy] = Field(default_factory=dict, description="Per-team route overrides.")
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings, description="The complexity classifier.")

    @model_validator(mode="after")
    def _references(self):
        for name, models in self.tiers.items():
            if not models:
                raise ValueError(f"tier {name!r} lists no models")
        if self.default_route not in self.routes:
            raise ValueError(f"default_route {self.default_route!r} is not one of the routes")
        for name, route in self.routes.items():
            for tier in (route.small, route.large):
                if route.strategy == "classifier" and tier not in self.tiers:
                    raise ValueError(f"routes.{name}: tier {tier!r} is not defined under tiers")
            for key in ("tools_tier", "structured_tier"):
                tier = getattr(route, key)
                if tier is not None and tier not in self.tiers:
                    raise ValueError(f"routes.{name}.{key}: tier {tier!r} is not defined under tiers")
        for team, tp in self.teams.items():
            if tp.route not in self.routes:
                raise ValueError(f"teams.{team}.route: {tp.route!r} is not one of the routes")
        return self

    def models(self) -> set[str]:
        """Every model the policy may send a request to."""
        out = {m for models in self.tiers.values() for m in models}
        for route in self.routes.values():
            out.update(route.fallbacks)
            if route.speculative is not None:
                out.update(route.speculative.drafts)
                out.update(route.speculative.drafts.values())
            if route.model:
                out.add(route.model)
        return out


def parse_policy(data: object, source: str = "<policy>", known_models: set[str] | None = None) -> Policy:
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError("invalid routing policy\n  " + validation_lines(exc, source)) from None
    if known_models is not None:
        unknown = sorted(policy.models() - known_models)
        if unknown:
            raise PolicyError(f"{source}: names models the gateway does not serve: {', '.join(unknown)}")
    return policy


def load_policy(path: str | Path, known_models: set[str] | None = None) -> Policy:
    return parse_policy(read_yaml(path, PolicyError), str(path), known_models)
