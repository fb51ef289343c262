"""The `routing:` section of muxgate's YAML: how `model: "auto"` is resolved."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated once at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutingConfig(Strict):
    default_model: str = Field(description="Model that `model: \"auto\"` resolves to when no policy picks another.")
