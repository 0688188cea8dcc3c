"""Evaluation against hand-computed values: perfect and zero SAEs, planted latents, toy recovery, sweeps."""

import json

import numpy as np
import pytest
import torch

import saekit
from saekit.evaluate import (
    concept_probes,
    concept_recovery,
    concept_scores,
    downstream_metrics,
    plot_pareto,
    reconstruction_metrics,
    scores_to_f1,
    sweep,
)
from saekit.sae import SAEConfig, create_sae
from saekit.store import InMemoryStore, collect_activations
from saekit.toy import mcc, mmcs, toy_activations, toy_features
from saekit.train import TrainConfig, train_sae
from saekit.world import CONCEPT_INDEX, CONCEPTS

HOOK = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def store(default):
    model, tokenizer = default
    return collect_activations(model, tokenizer, HOOK, 30_000, None, progress=False)


def identity_sae(d=128):
    """A ReLU SAE that reproduces its input exactly: f = [ReLU(x), ReLU(-x)], x_hat = f+ - f-."""
    sae = create_sae(SAEConfig(architecture="relu", d_in=d, d_sae=2 * d, hook_name=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae.eval()


def zero_sae(d=128):
    return create_sae(SAEConfig(architecture="relu", d_in=d, d_sae=16, hook_name=HOOK)).eval()  # all weights 0


def test_a_perfect_sae_scores_perfect_fidelity(default, store):
    model, tokenizer = default
    m = reconstruction_metrics(identity_sae(), store, HOOK)
    assert m.tokens == 30_000 and m.mse < 1e-8
    for value in (m.explained_variance, m.cosine, m.l2_ratio, m.relative_bias):
        assert value == pytest.approx(1.0, abs=1e-6)
    d = downstream_metrics(model, tokenizer, identity_sae(), HOOK, n_rows=8)
    assert d.ce_sae == pytest.approx(d.ce_clean, abs=1e-5) and abs(d.delta_ce) < 1e-5
    assert d.kl_sae < 1e-6 and d.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert d.kl_score == pytest.approx(1.0, abs=1e-5) and d.ce_zero > d.ce_clean + 0.1


def test_a_zero_sae_matches_zero_ablation(default, store):
    model, tokenizer = default
    d = downstream_metrics(model, tokenizer, zero_sae(), HOOK, n_rows=8)
    assert d.ce_sae == pytest.approx(d.ce_zero, abs=1e-6) and d.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert d.kl_sae == pytest.approx(d.kl_zero) and d.kl_score == pytest.approx(0.0, abs=1e-6)
    m = reconstruction_metrics(zero_sae(), store, HOOK)
    assert m.l0 == 0 and m.dead_fraction == 1.0 and m.l2_ratio == 0


@pytest.mark.parametrize("era", ["current-2026-07", "early-2025-10"])
def test_the_splice_works_on_real_nanochat_checkpoints(era):
    model, tokenizer = saekit.load_model(f"tests/fixtures/nanochat/{era}")
    hook = f"blocks.{model.config.n_layer - 1}.hook_resid_post"
    d_in = model.config.n_embd
    perfect = downstream_metrics(model, tokenizer, identity_sae(d_in), hook, n_rows=2, context_size=32)
    assert abs(perfect.delta_ce) < 1e-5 and perfect.kl_sae < 1e-6
    zero = downstream_metrics(model, tokenizer, zero_sae(d_in), hook, n_rows=2, context_size=32)
    assert zero.ce_sae == pytest.approx(zero.ce_zero, abs=1e-6) and zero.kl_sae > 0


def test_keeping_the_error_term_reproduces_the_clean_model(default):
    model, tokenizer = default
    sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=256, k=4, hook_name=HOOK))
    sae.init_weights(torch.Generator().manual_seed(0))
    d = downstream_metrics(model, tokenizer, sae, HOOK, n_rows=8, keep_error=True)
    assert abs(d.delta_ce) < 1e-4 and d.kl_sae < 1e-5
    assert downstream_metrics(model, tokenizer, sae, HOOK, n_rows=8).delta_ce > 0.1


def test_metrics_against_a_hand_computation(store):
    sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=64, k=3, hook_name=HOOK))
    sae.init_weights(torch.Generator().manual_seed(1))
    x = store.activations(HOOK)[:5000].double()
    with torch.no_grad():
        f = sae.encode(x.float()).double()
        x_hat = sae.decode(f.float()).double()
    m = reconstruction_metrics(sae, store, HOOK, n_tokens=5000, batch_size=777)
    assert m.mse == pytest.approx(float((x - x_hat).pow(2).sum(1).mean()), rel=1e-6)
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert m.explained_variance == pytest.approx(float(ev), rel=1e-6)
    assert m.relative_bias == pytest.approx(float(x_hat.pow(2).sum() / (x * x_hat).sum()), rel=1e-6)
    assert m.l0 == pytest.approx(float((f > 0).sum(1).float().mean()))
    assert np.allclose(m.firing_frequency, (f > 0).double().mean(0).numpy())


def test_concept_scores_by_hand():
    active = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    labels = torch.tensor([[1], [1], [0], [0]], dtype=torch.bool)
    s = concept_scores(active, labels)
    precision, recall, f1 = scores_to_f1(s["tp"], s["fires"], s["positives"])
    assert s["tp"].flatten().tolist() == [2, 1]
    assert precision.flatten().tolist() == pytest.approx([2 / 3, 1 / 2])
    assert recall.flatten().tolist() == pytest.approx([1.0, 0.5])
    assert f1[0, 0] == pytest.approx(0.8)


def test_a_latent_planted_on_a_concept_gets_f1_one(store):
    labels = torch.from_numpy(store.labels())
    colour = CONCEPT_INDEX["colour"]
    noise = torch.rand(len(labels), 5, generator=torch.Generator().manual_seed(0)) < 0.1
    active = torch.cat([noise, labels[:, colour:colour + 1]], dim=1)  # latent 5 == the colour labels
    s = concept_scores(active, labels)
    _, _, f1 = scores_to_f1(s["tp"], s["fires"], s["positives"])
    assert f1[5, colour] == 1.0 and f1[:, colour].argmax() == 5 and f1[:5, colour].max() < 0.5


def test_concept_recovery_on_a_trained_sae(store):
    result = train_sae(create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=512, k=16, hook_name=HOOK)),
                       store, TrainConfig(steps=60, batch_size=2048, lr=2e-3, lr_warmup_steps=5), HOOK,
                       progress=False)
    report = concept_recovery(result.raw_sae(), store, HOOK)
    assert len(report.rows) == len(CONCEPTS) and 0 < report.coverage < 1
    for row in report.rows:
        c = CONCEPT_INDEX[row["concept"]]
        assert row["f1"] == pytest.approx(report.f1[:, c].max())
    fired = ~np.isnan(report.purity)
    assert fired.any() and (report.purity[fired] <= 1).all() and (report.purity[fired] > 0).all()
    assert "concept" in report.table() and report.coverage > 0.2


def test_toy_superposition_recovered():
    features = toy_features(n_features=64, d=32, seed=0)
    assert mmcs(features, features) == pytest.approx(1.0) and mcc(features, features) == pytest.approx(1.0)
    shuffled = features[torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    assert mcc(torch.cat([shuffled, -shuffled]), features) == pytest.approx(1.0)  # order and sign do not matter
    random = toy_features(n_features=64, d=32, seed=9)
    assert mmcs(random, features) < 0.8
    data = InMemoryStore.from_tensor(toy_activations(features, 60_000, active=3))
    sae = create_sae(SAEConfig(architecture="topk", d_in=32, d_sae=128, k=3))
    result = train_sae(sae, data, TrainConfig(steps=400, batch_size=1024, lr=3e-3), progress=False)
    decoder = result.raw_sae().W_dec.detach()
    assert mmcs(decoder, features) > 0.95 and mcc(decoder, features) > 0.9


def test_sweep_and_pareto_plot(default, store):
    model, tokenizer = default
    configs = [SAEConfig(architecture="topk", d_in=128, d_sae=256, k=k, hook_name=HOOK) for k in (4, 16)]
    configs.append(SAEConfig(architecture="relu", d_in=128, d_sae=256, sparsity_coefficient=2.0, hook_name=HOOK))
    rows = sweep(configs, store, TrainConfig(steps=30, batch_size=1024, lr=2e-3, lr_warmup_steps=3), HOOK,
                 model=model, tokenizer=tokenizer, n_tokens=10_000, downstream_rows=4, progress=False)
    assert [r["architecture"] for r in rows] == ["topk", "topk", "relu"]
    assert rows[0]["l0"] < rows[1]["l0"] and rows[0]["fvu"] > rows[1]["fvu"]
    assert all({"delta_ce", "mean_concept_f1", "ce_loss_recovered"} <= set(r) for r in rows)
    fig = plot_pareto(rows)
    assert len(fig.axes) == 3
    json.dumps(rows)  # plain numbers, ready for a report


def test_concept_probes_find_a_linear_concept_and_not_a_random_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 16, generator=g)
    linear = (x[:, 3] - 0.5 * x[:, 7] > 1.0).numpy()  # concept 0: a half-space, exactly what a probe can draw
    noise = (torch.rand(20_000, generator=g) < 0.1).numpy()  # concept 1: labels unrelated to x
    store = InMemoryStore.from_tensor(x)
    store.manifest["labels"] = True
    store._meta_arrays["labels"] = linear.astype(np.uint64) | (noise.astype(np.uint64) << np.uint64(1))
    probes = concept_probes(store, n_tokens=20_000)
    f1 = [r["f1"] for r in probes.rows]
    assert f1[0] > 0.9, "a concept that is a half-space of the activations must be read out almost perfectly"
    assert f1[1] < 0.25, "a probe cannot predict labels that are independent of the activations"
    assert probes.rows[0]["frequency"] == pytest.approx(linear[10_000:].mean())
    assert probes.f1()[CONCEPTS[0].name] == f1[0]


def test_concept_probes_on_the_default_model(store):
    probes = concept_probes(store, HOOK, n_tokens=30_000)
    by_name = probes.f1()
    assert len(by_name) == len(CONCEPTS) and 0 < probes.mean_f1 < 1
    assert by_name["name"] > 0.9 and by_name["digit"] > 0.9  # word categories are linear in the residual stream
