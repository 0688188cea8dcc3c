"""Streaming features during generation: the same tokens as plain generation, the same codes as a full pass."""

import numpy as np
import pytest
import torch

import saekit
from saekit.evaluate import ConceptRecovery
from saekit.hooks import run_until
from saekit.runtime import Feature, TokenFeatures, latent_labels, stream
from saekit.sae import SAEConfig, create_sae
from saekit.steering import steer
from saekit.world import CONCEPTS

HOOK = "blocks.3.hook_resid_post"
OTHER_HOOK = "blocks.1.hook_resid_post"


def random_sae(hook=HOOK, architecture="topk", d_sae=256, k=16, seed=0):
    cfg = SAEConfig(architecture=architecture, d_in=128, d_sae=d_sae, k=k if architecture == "topk" else None,
                    hook_name=hook)
    sae = create_sae(cfg)
    sae.init_weights(torch.Generator().manual_seed(seed))
    return sae.eval()


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def top_features(sae, x, n):
    """The reference: encode every position and keep the top n active latents."""
    values, latents = sae.encode(x).topk(n, dim=-1)
    return [[(int(i), float(v)) for v, i in zip(vs, ls) if v > 0] for vs, ls in zip(values, latents)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stream_generates_what_generate_does(default, temperature):
    model, tokenizer = default
    prompt = tokenizer.encode("Once upon a time", prepend_bos=True)
    plain = list(saekit.generate(model, prompt, 24, temperature=temperature, seed=3))
    streamed = [t.token_id for t in stream(model, tokenizer, prompt, random_sae(), max_tokens=24,
                                           temperature=temperature, seed=3, stop_tokens=set())]
    assert streamed == plain
    assert no_hooks(model)


@pytest.mark.parametrize("architecture, read_every", [("topk", 1), ("topk", 3), ("relu", 8), ("jumprelu", 5)])
def test_streamed_features_match_a_full_forward_pass(default, architecture, read_every):
    """Whether features are read token by token or a few tokens at a time (16 tokens: bursts of 3 end
    with a burst of 1), every token gets the features of its own position."""
    model, tokenizer = default
    sae = random_sae(architecture=architecture)
    reports = list(stream(model, tokenizer, "Mia went to the park.", sae, top_n=4, max_tokens=16, stop_tokens=set(),
                          include_prompt=True, read_every=read_every))
    ids = [t.token_id for t in reports]
    assert [t.position for t in reports] == list(range(len(ids)))
    x = run_until(model, torch.tensor([ids]), HOOK)[HOOK][0]
    expected = top_features(sae, x, 4)
    for t, want in zip(reports, expected):
        if t.token_id in tokenizer.special_id_set:
            assert t.features == ()
            continue
        assert [f.latent for f in t.features] == [i for i, _ in want]
        assert np.allclose([f.activation for f in t.features], [v for _, v in want], atol=1e-4)
        assert all(f.hook == HOOK and f.label is None for f in t.features)
    assert sum(len(t.features) for t in reports) > len(reports)  # random SAEs fire too
    n_prompt = len(tokenizer.encode("Mia went to the park.", prepend_bos=True))
    assert [t.generated for t in reports] == [False] * n_prompt + [True] * 16
    assert "".join(t.token for t in reports[n_prompt:]) == tokenizer.decode(ids[n_prompt:])


def test_several_saes_at_several_hook_points_with_labels(default):
    model, tokenizer = default
    first, second, same_hook = random_sae(), random_sae(OTHER_HOOK, seed=1), random_sae(d_sae=64, k=4, seed=2)
    labels = [f"concept {i}" for i in range(256)]
    reports = list(stream(model, tokenizer, "Tom saw a", [first, second, same_hook], labels=[labels, None, None],
                          top_n=2, max_tokens=8, stop_tokens=set()))
    assert len(reports) == 8
    for t in reports:  # per SAE in order, its top 2 (random TopK SAEs always have 2 positive latents)
        assert [f.hook for f in t.features] == [HOOK, HOOK, OTHER_HOOK, OTHER_HOOK, HOOK, HOOK]
        assert [f.label for f in t.features] == [labels[f.latent] for f in t.features[:2]] + [None] * 4
        assert t.features[5].latent < 64 and t.features[0].activation >= t.features[1].activation
    assert isinstance(reports[0], TokenFeatures) and isinstance(reports[0].features[0], Feature)
    assert "concept" in str(reports[0])


def test_labels_come_from_concept_recovery():
    f1 = np.zeros((5, len(CONCEPTS)))
    f1[0, 4] = 0.9
    f1[1, 2], f1[1, 3] = 0.3, 0.5
    f1[2, 0] = 0.05
    report = ConceptRecovery(rows=[], coverage=0, concepts_found=0, purity=np.zeros(5),
                             best_concept=np.zeros(5, dtype=int), f1=f1)
    labels = latent_labels(report, min_f1=0.1)
    assert labels[0] == f"{CONCEPTS[4].name} F1 0.90"
    assert labels[1] == f"{CONCEPTS[3].name} F1 0.50"
    assert labels[2] is None and labels[3] is None


def test_stream_stops_at_a_stop_token_and_leaves_the_model_unhooked(default):
    model, tokenizer = default
    sae = random_sae()
    plain = list(saekit.generate(model, tokenizer.encode("Once upon a time", prepend_bos=True), 200))
    first_bos = plain.index(tokenizer.bos_id)  # the story ends and the next document begins
    reports = list(stream(model, tokenizer, "Once upon a time", sae, max_tokens=200))
    assert len(reports) == first_bos + 1 and reports[-1].token_id == tokenizer.bos_id
    assert reports[-1].features == ()
    assert no_hooks(model)
    for t in stream(model, tokenizer, "Once upon a time", sae, max_tokens=50):
        if t.position > 8:
            break
    assert no_hooks(model)
    with pytest.raises(RuntimeError, match="consumer"):
        for _ in stream(model, tokenizer, "Once upon a time", sae, max_tokens=50):
            raise RuntimeError("consumer failed")
    assert no_hooks(model)


def test_a_steered_latent_shows_up_in_the_stream(default):
    model, tokenizer = default
    sae = random_sae(d_sae=256, k=16)
    clean = list(stream(model, tokenizer, "Once upon a time", sae, top_n=1, max_tokens=12, stop_tokens=set()))
    latent = 17
    assert sum(f.latent == latent for t in clean for f in t.features) < 3
    with steer(model, sae, latent, 2.0, relative_to="norm"):
        steered = list(stream(model, tokenizer, "Once upon a time", sae, top_n=1, max_tokens=12, stop_tokens=set()))
    assert all(t.features[0].latent == latent for t in steered)


def test_stream_rejects_bad_input(default):
    model, tokenizer = default
    with pytest.raises(ValueError, match="cfg.hook_name"):
        next(stream(model, tokenizer, "Hi", create_sae(SAEConfig(architecture="relu", d_in=128, d_sae=8))))
    with pytest.raises(ValueError, match="one label per latent \\(256\\), found 3"):
        next(stream(model, tokenizer, "Hi", random_sae(), labels=["a", "b", "c"]))
    with pytest.raises(ValueError, match="labels for each of the 2 SAEs, found 1"):
        next(stream(model, tokenizer, "Hi", [random_sae(), random_sae()], labels=[None]))
    with pytest.raises(ValueError, match="one entry"):
        next(stream(model, tokenizer, "Hi", [random_sae()], labels="not a list"))
    narrow = create_sae(SAEConfig(architecture="relu", d_in=64, d_sae=8, hook_name=HOOK))
    with pytest.raises(ValueError, match="reads 64-wide activations"):
        list(stream(model, tokenizer, "Hi", narrow, max_tokens=2))
    with pytest.raises(ValueError, match="non-empty prompt"):
        next(stream(model, tokenizer, [], random_sae()))
    with pytest.raises(ValueError, match="read_every must be positive"):
        next(stream(model, tokenizer, "Hi", random_sae(), read_every=0))
    assert no_hooks(model)
