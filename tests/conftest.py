"""Fixtures shared by the test files."""

import pytest

import saekit


@pytest.fixture(scope="session")
def default():
    """The embedded default model and its tokenizer (loading takes 0.02 s; one copy serves every test)."""
    return saekit.load_model()
