"""Interventions are exact and leave the model as it was; steering measurably moves TinyWorld concepts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import saekit
from saekit.hooks import HookError, capture
from saekit.sae import SAEConfig, create_sae
from saekit.steering import (
    Ablate,
    Clamp,
    Steer,
    ablate,
    chat_answer,
    clamp,
    concept_rate,
    concept_tokens,
    continuation_loss,
    dose_response,
    generate_text,
    intervene,
    lens_concept_share,
    logit_lens,
    max_activations,
    output_scores,
    sample_continuations,
    steer,
)
from saekit.store import collect_activations
from saekit.world import COLOURS

HOOK = "blocks.3.hook_resid_post"
OTHER_HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def ids(default):
    _, tokenizer = default
    return torch.tensor([tokenizer.encode("Once upon a time, Mia saw a red fox in the park.", prepend_bos=True)])


def random_sae(hook=HOOK, d_sae=64, k=8, seed=0, architecture="topk"):
    cfg = SAEConfig(architecture=architecture, d_in=128, d_sae=d_sae, k=k if architecture == "topk" else None,
                    aux_k=min(k, d_sae) if architecture == "topk" else None, hook_name=hook)
    sae = create_sae(cfg)
    sae.init_weights(torch.Generator().manual_seed(seed))
    return sae.eval()


def colour_sae(model, tokenizer):
    """Latent 0 writes the unembedding direction of the colour words; latent 1 has a zero decoder row."""
    sae = random_sae(d_sae=4, k=1)
    colours = [tokenizer.encode(" " + c)[0] for c in COLOURS]
    W = model.lm_head.weight[:tokenizer.vocab_size].detach()
    with torch.no_grad():
        sae.W_dec[0] = F.normalize(W[colours].mean(0) - W.mean(0), dim=0)
        sae.W_dec[1] = 0
    return sae


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def activation(model, ids, hook=HOOK):
    with torch.no_grad(), capture(model, hook) as acts:
        model(ids)
    return acts[hook]


@torch.no_grad()
def test_a_zero_strength_steer_changes_nothing(default, ids):
    model, tokenizer = default
    sae = random_sae()
    clean = model(ids)
    maxes = torch.full((sae.cfg.d_sae,), 7.0)
    with steer(model, sae, 3, 0.0, max_acts=maxes):
        assert torch.equal(model(ids), clean)
    with steer(model, sae, 3, 0.0, relative_to="norm"):
        assert torch.equal(model(ids), clean)
        steered_text = generate_text(model, tokenizer, "Once upon a time", 16)
    assert steered_text == generate_text(model, tokenizer, "Once upon a time", 16)
    with steer(model, sae, 3, 2.0, max_acts=maxes):
        assert not torch.allclose(model(ids), clean, atol=1e-3)


@torch.no_grad()
def test_steering_adds_the_decoder_direction_scaled_by_max_or_norm(default, ids):
    model, _ = default
    sae = random_sae()
    x = activation(model, ids)
    maxes = torch.arange(sae.cfg.d_sae, dtype=torch.float32)
    with steer(model, sae, 5, 1.5, max_acts=maxes), capture(model, HOOK) as acts:
        model(ids)
    assert torch.allclose(acts[HOOK], x + 1.5 * 5.0 * sae.W_dec[5], atol=1e-5)
    with steer(model, sae, 5, 0.5, relative_to="norm"), capture(model, HOOK) as acts:
        model(ids)
    unit = sae.W_dec[5] / sae.W_dec[5].norm()
    assert torch.allclose(acts[HOOK], x + 0.5 * x.norm(dim=-1, keepdim=True) * unit, atol=1e-4)


@torch.no_grad()
def test_clamping_to_the_natural_value_reproduces_the_clean_logits_exactly(default, ids):
    model, _ = default
    sae = random_sae(architecture="relu", d_sae=32)
    with torch.no_grad():  # latent 7 reads nothing and always fires at 2.5: its natural value is known everywhere
        sae.W_enc[:, 7] = 0
        sae.b_enc[7] = 2.5 + float(sae.b_dec @ sae.W_enc[:, 7])
    clean = model(ids)
    assert torch.all(sae.encode(activation(model, ids))[..., 7] == 2.5)
    with clamp(model, sae, 7, 2.5, relative_to="raw"):
        assert torch.equal(model(ids), clean)
    maxes = torch.full((32,), 5.0)
    with clamp(model, sae, 7, 0.5, max_acts=maxes):  # 0.5 x max = 2.5
        assert torch.equal(model(ids), clean)
    with clamp(model, sae, 7, 4.0, relative_to="raw"):
        assert not torch.allclose(model(ids), clean, atol=1e-3)


@torch.no_grad()
def test_a_clamp_keeps_the_error_term_so_only_the_latent_changes(default, ids):
    model, _ = default
    sae = random_sae(d_sae=64, k=8)
    x = activation(model, ids)
    f = sae.encode(x)
    latent = int(f[0, 3].argmax())  # a latent active at position 3
    edited = f.clone()
    edited[..., latent] = 9.0
    expected = sae.decode(edited) + (x - sae.decode(f))
    with clamp(model, sae, latent, 9.0, relative_to="raw"), capture(model, HOOK) as acts:
        model(ids)
    assert torch.allclose(acts[HOOK], expected, atol=1e-4)
    ablated = f.clone()
    ablated[..., latent] = 0
    with ablate(model, sae, latent), capture(model, HOOK) as acts:
        model(ids)
    assert torch.allclose(acts[HOOK], sae.decode(ablated) + (x - sae.decode(f)), atol=1e-4)
    assert not torch.allclose(acts[HOOK], x, atol=1e-3)


@torch.no_grad()
def test_ablating_a_latent_that_never_fires_changes_nothing(default, ids):
    model, _ = default
    sae = random_sae(d_sae=64, k=8)
    fired = (sae.encode(activation(model, ids)) > 0).any(dim=(0, 1))
    silent = [int(i) for i in torch.nonzero(~fired).flatten()[:5]]
    clean = model(ids)
    with ablate(model, sae, silent):
        assert torch.equal(model(ids), clean)


@torch.no_grad()
def test_several_edits_at_one_and_several_hook_points(default, ids):
    model, _ = default
    sae, other = random_sae(), random_sae(OTHER_HOOK, seed=1)
    maxes = torch.linspace(1, 2, sae.cfg.d_sae)
    x = activation(model, ids)
    with intervene(model, Steer(sae, 1, 2.0, max_acts=maxes), Steer(sae, 9, -1.0, max_acts=maxes)), \
            capture(model, HOOK) as acts:
        model(ids)
    expected = x + 2.0 * maxes[1] * sae.W_dec[1] - 1.0 * maxes[9] * sae.W_dec[9]
    assert torch.allclose(acts[HOOK], expected, atol=1e-5)
    # clamps and ablations of one SAE at one hook point: one encode -> edit -> decode, with the error kept
    f = sae.encode(x)
    edited = f.clone()
    edited[..., 4], edited[..., [2, 5]] = 3.0, 0.0
    with intervene(model, Clamp(sae, np.int64(4), 3.0, relative_to="raw"), Ablate(sae, torch.tensor([2, 5]))), \
            capture(model, HOOK) as acts:
        model(ids)
    assert torch.allclose(acts[HOOK], sae.decode(edited) + x - sae.decode(f), atol=1e-4)
    # at different hook points, one `intervene` is the same as nesting the single edits
    with intervene(model, [Steer(sae, 1, 2.0, max_acts=maxes), Clamp(other, 4, 3.0, relative_to="raw")]):
        together = model(ids)
    with steer(model, sae, 1, 2.0, max_acts=maxes), clamp(model, other, 4, 3.0, relative_to="raw"):
        nested = model(ids)
    assert torch.allclose(together, nested, atol=1e-5)
    assert not torch.allclose(together, model(ids), atol=1e-3)
    with pytest.raises(ValueError, match="clamped or ablated twice"):
        with intervene(model, Ablate(sae, [2, 5]), Clamp(sae, 5, 1.0, relative_to="raw")):
            pass


@torch.no_grad()
def test_the_model_is_restored_after_every_context_manager_even_on_exceptions(default, ids):
    model, _ = default
    sae, other = random_sae(), random_sae(OTHER_HOOK, seed=1)
    maxes = torch.ones(sae.cfg.d_sae)
    clean = model(ids)
    firing = [int(i) for i in torch.nonzero((sae.encode(activation(model, ids)) > 0).any(dim=(0, 1))).flatten()[:3]]
    managers = [lambda: steer(model, sae, 0, 3.0, max_acts=maxes),
                lambda: steer(model, sae, 0, 1.0, relative_to="norm"),
                lambda: clamp(model, sae, 0, 2.0, max_acts=maxes),
                lambda: ablate(model, sae, firing),
                lambda: intervene(model, Steer(sae, 0, 1.0, max_acts=maxes), Ablate(other, 3))]
    for manager in managers:
        with manager():
            assert not torch.equal(model(ids), clean)  # the edit is live inside the block
        assert no_hooks(model) and torch.equal(model(ids), clean)
        with pytest.raises(RuntimeError, match="boom"):
            with manager():
                model(ids)
                raise RuntimeError("boom")
        assert no_hooks(model) and torch.equal(model(ids), clean)


@torch.no_grad()
def test_bad_input_gives_clear_errors_and_leaves_no_hooks(default, ids):
    model, _ = default
    sae = random_sae()
    with pytest.raises(ValueError, match="out of range: this SAE has 64 latents"):
        with steer(model, sae, 64, 1.0, relative_to="norm"):
            pass
    with pytest.raises(ValueError, match="max_acts=max_activations"):
        with steer(model, sae, 1, 1.0):
            pass
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        with steer(model, sae, 1, 1.0, max_acts=torch.ones(10)):
            pass
    with pytest.raises(ValueError, match="finite"):
        with steer(model, sae, 1, float("nan"), relative_to="norm"):
            pass
    with pytest.raises(ValueError, match="relative_to must be one of"):
        with clamp(model, sae, 1, 1.0, relative_to="norm"):
            pass
    with pytest.raises(HookError, match="unknown hook point"):
        with steer(model, sae, 1, 1.0, relative_to="norm", hook="blocks.9.hook_resid_post"):
            pass
    narrow = create_sae(SAEConfig(architecture="relu", d_in=64, d_sae=16, hook_name=HOOK))
    with pytest.raises(ValueError, match="reads 64-wide activations, but blocks.3.hook_resid_post is 128 wide"):
        with ablate(model, narrow, 1):
            model(ids)
    with pytest.raises(ValueError, match="no hook_name"):
        with ablate(model, create_sae(SAEConfig(architecture="relu", d_in=128, d_sae=16)), 1):
            pass
    assert no_hooks(model)


def test_max_activations_is_the_largest_code_value_over_the_store(default):
    model, tokenizer = default
    store = collect_activations(model, tokenizer, HOOK, 5_000, None, progress=False)
    sae = random_sae(d_sae=128, k=16)
    maxes = max_activations(sae, store, HOOK, batch_size=1000)
    with torch.no_grad():
        expected = sae.encode(store.activations(HOOK)).amax(dim=0)
    assert maxes.shape == (128,) and torch.allclose(maxes, expected)
    assert (maxes > 0).sum() > 10


def test_concept_rate_counts_words_with_tinyworld_labeller():
    assert concept_rate("the red cat and the blue dog", "colour") == pytest.approx(2 / 7)
    assert concept_rate(["the red cat", "a dog"], "animal") == pytest.approx(2 / 5)
    assert concept_rate(["no such words here"], "weekday") == 0
    with pytest.raises(ValueError, match="unknown concept 'colours'"):
        concept_rate("red", "colours")


def test_continuation_loss_is_the_models_loss_on_the_continuation(default):
    model, tokenizer = default
    prompt = tokenizer.encode("Once upon a time", prepend_bos=True)
    fluent = tokenizer.encode(", there was a tiny cat called Mia.")
    garbled = tokenizer.encode(" cat was Mia tiny there, called a.")
    with torch.no_grad():
        logp = model(torch.tensor([prompt + fluent])).log_softmax(-1)[0]
    expected = -sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(fluent)) / len(fluent)
    assert continuation_loss(model, prompt, fluent) == pytest.approx(expected, rel=1e-5)
    assert continuation_loss(model, prompt, garbled) > continuation_loss(model, prompt, fluent) + 1


def test_dose_response_steers_colour_up_and_is_deterministic(default):
    model, tokenizer = default
    sae = colour_sae(model, tokenizer)
    kwargs = dict(relative_to="norm", prompts=("Once upon a time", "Mia went to the park."), seeds=(0, 1),
                  max_tokens=12)
    result = dose_response(model, tokenizer, sae, 0, "colour", (0, 4), **kwargs)
    assert result.rates[1] > result.rates[0] + 0.5  # nearly every word a colour
    assert result.losses[1] > result.losses[0]  # and the text is no longer what the clean model would write
    unsteered = [generate_text(model, tokenizer, p, 12, temperature=1.0, seed=s, stop_tokens={tokenizer.bos_id})
                 for p in kwargs["prompts"] for s in kwargs["seeds"]]
    assert result.texts[0] == unsteered
    again = dose_response(model, tokenizer, sae, 0, "colour", (4,), **kwargs)
    assert again.texts == result.texts[1:] and again.rates == result.rates[1:]
    assert "colour" in result.table() and no_hooks(model)


def test_output_scores_rank_a_writing_latent_above_silent_ones(default):
    model, tokenizer = default
    sae = colour_sae(model, tokenizer)
    lens = logit_lens(model, sae)
    assert lens.shape == (4, tokenizer.vocab_size)
    colour_ids = {tokenizer.encode(" " + c)[0] for c in COLOURS}
    assert set(lens[0].topk(5).indices.tolist()) <= colour_ids
    scores = output_scores(model, tokenizer, sae, strength=4.0, relative_to="norm", n_rows=2)
    assert scores.shape == (4,)
    assert scores[0] > 0.5 and scores[1] == 0  # a zero decoder row changes nothing
    assert torch.equal(output_scores(model, tokenizer, sae, [0, 1], strength=0.0, relative_to="norm", n_rows=2),
                       torch.zeros(2))
    maxes = torch.tensor([1.0, 1.0, 1.0, 1.0])
    batched = output_scores(model, tokenizer, sae, [0, 2, 3], strength=30.0, max_acts=maxes, n_rows=2, batch_rows=2)
    single = torch.stack([output_scores(model, tokenizer, sae, [i], strength=30.0, max_acts=maxes, n_rows=2)[0]
                          for i in (0, 2, 3)])
    assert torch.allclose(batched, single, atol=1e-5)
    colour_ids = concept_tokens(tokenizer, "colour")
    assert {tokenizer.token_str(i).strip() for i in colour_ids} == set(COLOURS)  # " red", and "red" where it exists
    towards = output_scores(model, tokenizer, sae, [0, 1], strength=4.0, relative_to="norm", n_rows=2,
                            tokens=colour_ids)
    assert towards[0] > 0.5 and towards[1] == 0


def test_chat_answers_in_nanochats_format_and_can_be_steered(default):
    model, tokenizer = default
    clean = chat_answer(model, tokenizer, "What colour is the sky?")
    assert "blue" in clean.lower() and "<|" not in clean
    sae = colour_sae(model, tokenizer)
    with steer(model, sae, 0, 4.0, relative_to="norm"):
        steered = chat_answer(model, tokenizer, "Tell me a short story.")
    assert concept_rate(steered, "colour") > concept_rate(chat_answer(model, tokenizer, "Tell me a short story."),
                                                          "colour") + 0.3
    conversation = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Pear."},
                    {"role": "user", "content": "What colour is the sky?"}]
    assert "blue" in chat_answer(model, tokenizer, conversation).lower()


def test_sampled_continuations_are_generates_samples_in_one_batch(default):
    model, tokenizer = default
    ids = tokenizer.encode("Once upon a time", prepend_bos=True)
    rows = sample_continuations(model, ids, [0, 1, 2], 40, temperature=1.0, stop_tokens={tokenizer.bos_id})
    for seed, row in zip([0, 1, 2], rows):
        assert row == list(saekit.generate(model, ids, 40, temperature=1.0, seed=seed, stop_tokens={tokenizer.bos_id}))
    assert len({tuple(r) for r in rows}) == 3
    greedy = sample_continuations(model, ids, [0, 1], 200, temperature=0.0, stop_tokens={tokenizer.bos_id})
    assert greedy[0] == greedy[1] and greedy[0][-1] == tokenizer.bos_id  # ends with the story


def test_the_logit_lens_carries_mlp_directions_through_c_proj_and_lens_shares_count_concepts(default):
    model, tokenizer = default
    sae = create_sae(SAEConfig(architecture="relu", d_in=512, d_sae=8, hook_name="blocks.2.mlp.hook_post"))
    sae.init_weights(torch.Generator().manual_seed(0))
    c_proj, unembed = model.transformer.h[2].mlp.c_proj.weight, model.lm_head.weight[:tokenizer.vocab_size]
    assert torch.allclose(logit_lens(model, sae), sae.W_dec @ c_proj.T @ unembed.T, atol=1e-5)
    share = lens_concept_share(model, tokenizer, colour_sae(model, tokenizer), "colour", top_tokens=10)
    assert share[0] == 1.0 and share[1] == 0.0  # all ten of latent 0's tokens are colours (latent 1 writes nothing)
    with pytest.raises(ValueError, match="only be read off single tokens for lexical concepts"):
        lens_concept_share(model, tokenizer, sae, "quote")
