"""Fixtures shared by the engine's structured-output tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def engine_2m(zoo_dir):
    """The smallest zoo model's engine in float32 (exact equalities between runs), one per module."""
    from workers.engine import Engine

    torch.set_num_threads(1)
    eng = Engine.load("mux-2m", str(zoo_dir / "mux-2m"), dtype="float32")
    yield eng
    eng.close()
