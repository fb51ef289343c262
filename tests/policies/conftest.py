"""Shared fixtures for the policies tests: everything comes from the repository, not /work/shared."""

import pytest

from policies import routing_data
from policies.classifier import ComplexityClassifier


@pytest.fixture(scope="session")
def shipped():
    """The classifier with the weights shipped in policies/weights/ (loaded once)."""
    return ComplexityClassifier.load()


@pytest.fixture(scope="session")
def sample():
    """The in-repo routing sample (policies/data/routing_sample.jsonl)."""
    return routing_data.load(routing_data.SAMPLE_DATA_DIR)
