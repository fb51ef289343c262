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
