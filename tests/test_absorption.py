"""Feature absorption: on hand-built SAEs where one latent provably absorbs a member of "animal", where the
parent latent covers every animal, and where it misses one without any latent taking over."""

import numpy as np
import pytest
import torch

from saekit.absorption import CATEGORIES, absorption, plot_absorption
from saekit.sae import SAEConfig, create_sae
from saekit.store import InMemoryStore
from saekit.world import CONCEPT_INDEX

# directions: animal, cat, dog, fox, and two unrelated ones
ANIMAL, CAT, DOG, FOX, OTHER1, OTHER2 = torch.eye(6)
NAMES = {1: " cat", 2: " dog", 3: "Fox", 4: "s", 10: " the", 11: "."}


class Tokenizer:
    def token_str(self, token_id):
        return NAMES[token_id]


def world():
    """620 tokens: 60 cats, 100 dogs, 80 foxes (each animal + its own direction), 20 plural "s" pieces also
    labelled animal, 360 others."""
    ids = np.array([1] * 60 + [2] * 100 + [3] * 80 + [4] * 20 + [10, 11] * 180)
    x = torch.stack([{1: ANIMAL + CAT, 2: ANIMAL + DOG, 3: ANIMAL + FOX, 4: ANIMAL, 10: OTHER1, 11: OTHER2}[i]
                     for i in ids])
    store = InMemoryStore.from_tensor(x)
    store.manifest["labels"] = True
    animal_bit = np.uint64(1) << np.uint64(CONCEPT_INDEX["animal"])
    store._meta_arrays.update(tokens=ids.astype(np.int32),
                              labels=np.where(ids < 10, animal_bit, np.uint64(0)).astype(np.uint64))
    return store


def sae_with(parent_encoder, cat_decoder):
    """A ReLU SAE over the six directions: latent 0 the parent, 1 cat, 2 dog, 3 fox, 4 and 5 the others."""
    sae = create_sae(SAEConfig(architecture="relu", d_in=6, d_sae=6))
    with torch.no_grad():
        sae.W_enc.copy_(torch.stack([parent_encoder, CAT, DOG, FOX, OTHER1, OTHER2]).T)
        sae.W_dec.copy_(torch.stack([ANIMAL, torch.nn.functional.normalize(cat_decoder, dim=0), DOG, FOX,
                                     OTHER1, OTHER2]))
    return sae.eval()


def test_a_latent_that_absorbs_cat_is_found():
    # the parent latent is switched off on cats, and the cat latent writes the animal direction there
    report = absorption(sae_with(ANIMAL - 2 * CAT, ANIMAL + CAT), world(), Tokenizer(), parents=["animal"])
    row = report.row("animal")
    assert row["latent"] == 0 and row["tokens"] == 240  # whole words only: the "s" pieces are left out
    assert row["recall"] == pytest.approx(180 / 240) and row["absorption_rate"] == pytest.approx(60 / 240)
    assert row["absorbers"] == [{"latent": 1, "tokens": 60, "members": ["cat"]}]
    members = {m["member"]: m for m in row["members"]}
    assert members["cat"]["recall"] == 0 and members["cat"]["absorption_rate"] == 1
    assert members["dog"]["recall"] == 1 and members["fox"]["absorption_rate"] == 0
    assert report.mean_absorption == pytest.approx(0.25) and "animal" in report.table()


def test_a_parent_latent_that_covers_every_member_absorbs_nothing():
    report = absorption(sae_with(ANIMAL, ANIMAL + CAT), world(), Tokenizer(), parents=["animal"])
    row = report.row("animal")
    assert row["recall"] == 1 and row["absorption_rate"] == 0 and row["absorbers"] == []


def test_a_miss_without_a_latent_along_the_parent_is_not_absorption():
    # the parent latent still skips cats, but the cat latent writes only "cat": the animal part is lost, not absorbed
    report = absorption(sae_with(ANIMAL - 2 * CAT, CAT), world(), Tokenizer(), parents=["animal"])
    row = report.row("animal")
    assert row["recall"] == pytest.approx(0.75) and row["absorption_rate"] == 0
    # a lower cosine bar lets the cat latent count: with it, the same tokens are absorbed
    loose = absorption(sae_with(ANIMAL - 2 * CAT, CAT), world(), Tokenizer(), parents=["animal"], min_cosine=0.1,
                       min_share=0.2)
    assert loose.row("animal")["absorption_rate"] == pytest.approx(0.25)


def test_plot_and_bad_input():
    store = world()
    reports = {"a": absorption(sae_with(ANIMAL, CAT), store, Tokenizer(), parents=["animal"]),
               "b": absorption(sae_with(ANIMAL - 2 * CAT, ANIMAL + CAT), store, Tokenizer(), parents=["animal"])}
    ax = plot_absorption(reports)
    assert len(ax.patches) == 2
    assert "animal" in CATEGORIES and "weekday" in CATEGORIES and "quote" not in CATEGORIES
    with pytest.raises(ValueError, match="unknown parent concepts \\['mammal'\\]"):
        absorption(sae_with(ANIMAL, CAT), store, Tokenizer(), parents=["mammal"])
    with pytest.raises(ValueError, match="no tokens labelled \\['colour'\\]"):
        absorption(sae_with(ANIMAL, CAT), store, Tokenizer(), parents=["colour"])
