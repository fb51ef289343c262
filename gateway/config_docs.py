"""Renders docs/CONFIG.md from the config schema, so every knob is documented where it is defined."""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel

from gateway.config import MuxgateConfig

HEADER = """# Configuration reference

Generated from the schema in `gateway/config.py` by `muxgate config docs`; a test keeps this file
current. Unknown keys are errors. Relative paths are resolved against the directory muxgate runs in.

"""


def _is_model(tp) -> type[BaseModel] | None:
    for candidate in (tp, *typing.get_args(tp)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(tp) -> str:
    text = str(tp).replace("typing.", "").replace("NoneType", "null").replace(" | ", " or ")
    return text if not isinstance(tp, type) else tp.__name__


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "see below" if _is_model(field.annotation) else "`[]`"
    return f"`{json.dumps(field.default)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    nested = []
    out.append(f"## `{prefix or '(top level)'}`\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |")
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = _is_model(field.annotation)
        # "list of" only for lists of sections; a plain list (of str, ...) is named by _type_name
        shown = (("list of " if "list" in str(field.annotation) else "") + sub.__name__ if sub
                 else _type_name(field.annotation))
        out.append(f"| `{key}` | {shown} | {_default(field)} | "
                   f"{field.description or ''} |")
        if sub:
            nested.append((sub, key + ("[]" if "list" in str(field.annotation) else "")))
    out.append("")
    for sub, key in nested:
        _section(sub, key, out)


def render() -> str:
    out: list[str] = []
    _section(MuxgateConfig, "", out)
    return HEADER + "\n".join(out) + "\n"
