"""The `routing:` section of muxgate's YAML: how `model: "auto"` is resolved."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated once at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutingConfig(Strict):
    default_model: str = Field(description="Model that `model: \"auto\"` resolves to when no policy picks another.")
    policy_file: str | None = Field(
        None, description="YAML routing policy (tiers, routes per team, classifier targets, budget and capacity "
        "downgrades, fallbacks); reloaded when the file changes, a bad file keeps the old policy. "
        "See configs/routing.yaml and `muxgate policy check`.")


def key_path(loc: tuple) -> str:
    """pydantic's error location as a dotted path with [i] for list items: `models[1].path`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
