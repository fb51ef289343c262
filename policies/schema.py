"""The `routing:` section of muxgate's YAML: how `model: "auto"` is resolved."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Base of every model muxgate reads from outside (the YAML, request bodies, admin inputs):
    unknown keys are errors, NaN and Infinity are refused, and a parsed value is never changed
    afterwards (validated once, when it is read)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ShadowJudge(Strict):
    """How a shadow evaluation scores the two tiers' answers (give `model` or `rule`)."""

    model: str | None = Field(
        None, description="A served model that judges pairwise: it is shown the prompt and both answers (in a seeded "
        "random order) and asked which is better; its verdict (A, B or tie) gives scores 1/0 or 0.5 each. Called "
        "through muxgate's own backend and charged to the `budget` team.")
    rule: Literal["exact", "regex", "json_schema"] | None = Field(
        None, description="A rule for tasks with checkable answers: `exact` (the large tier's answer is the reference: "
        "the small one scores 1 when it equals it after trimming and case-folding, else 0; the large scores 1), "
        "`regex` (each answer scores 1 when `pattern` matches it), `json_schema` (each scores 1 when it is JSON valid "
        "against `json_schema`, or against the request's own response_format schema when that is not given).")
    pattern: str | None = Field(None, description="With rule `regex`: the pattern an answer must match (Python re, search).")
    json_schema: dict | None = Field(None, description="With rule `json_schema`: the JSON Schema answers must satisfy.")

    @model_validator(mode="after")
    def _one_judge(self):
        if (self.model is None) == (self.rule is None):
            raise ValueError("give exactly one of model, rule")
        if self.rule == "regex":
            if not self.pattern:
                raise ValueError("rule `regex` needs `pattern`")
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return self


class ShadowConfig(Strict):
    """Shadow evaluation: a sampled share of `auto` requests also run on the other tier, after the
    client's answer, and a judge scores both answers (outcomes the router learns from)."""

    share: float = Field(ge=0, le=1, description="Share of `auto` requests (routed by the classifier) evaluated; "
                         "sampled by a seeded hash of the request id, so every gateway samples the same requests.")
    judge: ShadowJudge = Field(description="How the two answers are scored.")
    budget: str = Field(description="Team id the shadow runs and the judge's calls are charged to (they show in its "
                        "reports under its key `muxgate-shadow`); its budget and rate limits cap them.")
    seed: int = Field(0, description="Seed of the sampling and of the judge's answer order.")
    max_concurrent: int = Field(2, ge=1, description="Shadow evaluations running at once per gateway.")
    max_queued: int = Field(64, ge=0, description="Evaluations waiting for a slot; beyond it new ones are dropped "
                            "(counted), so shadow traffic never builds up under load.")


class RoutingConfig(Strict):
    default_model: str = Field(description="Model that `model: \"auto\"` resolves to when no policy picks another.")
    policy_file: str | None = Field(
        None, description="YAML routing policy (tiers, routes per team, classifier targets, budget and capacity "
        "downgrades, fallbacks); reloaded when the file changes, a bad file keeps the old policy. "
        "See configs/routing.yaml and `muxgate policy check`.")
    shadow: ShadowConfig | None = Field(
        None, description="Shadow evaluation (labels for the router from the deployment's own traffic); off when unset.")


def key_path(loc: tuple) -> str:
    """pydantic's error location as a dotted path with [i] for list items: `models[1].path`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def read_yaml(path, error: type[Exception]):
    """A YAML file's data; unreadable files and syntax errors raise `error` naming the file."""
    from pathlib import Path

    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def validation_lines(exc, source: str) -> str:
    """pydantic errors as `file: key.path: message` lines."""
    return "\n  ".join(f"{source}: {key_path(e['loc'])}: {e['msg']}" for e in exc.errors())
