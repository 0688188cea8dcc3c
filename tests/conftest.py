"""Fixtures shared by the test files."""

import pytest

import saekit


@pytest.fixture(scope="session")
def default():
    """The embedded default model and its tokenizer (loading takes 0.02 s; one copy serves every test)."""
    return saekit.load_model()


@pytest.fixture
def assert_auxk_reach():
    """A check for the TopK family: AuxK's gradient reaches dead latents only, never b_dec."""

    def check(sae, aux, dead):
        assert aux > 0
        sae.zero_grad()
        aux.backward()
        assert sae.b_dec.grad is None or sae.b_dec.grad.abs().max() == 0
        touched_dec = sae.W_dec.grad.abs().sum(1) > 0
        touched_enc = sae.W_enc.grad.abs().sum(0) > 0
        assert touched_dec.any() and not (touched_dec & ~dead).any() and not (touched_enc & ~dead).any()

    return check
